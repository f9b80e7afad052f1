"""An MCP Python SDK client session that logs in with OAuth, the way MCP clients do.

`oauth_client_session` connects to an MCP server over Streamable HTTP with the SDK's own
OAuth support (`mcp.client.auth.OAuthClientProvider` as the httpx auth). Nothing is stubbed:
the SDK gets the server's 401, reads `resource_metadata` from `WWW-Authenticate`, fetches the
protected-resource metadata (RFC 9728), discovers the authorization server's metadata, builds
the authorization URL (PKCE, `state`, `resource` = the MCP server, `scope` of its choosing)
and, once the person is logged in, exchanges the code at the token endpoint and retries with
`Authorization: Bearer <JWT>`. The browser is `node tests/oidc/client.js authorize`, which
logs USER in through the test provider's (tests/oidc/server.js) interaction pages and prints
the redirect back to the client; the code and state are read from it.

The client is the provider's pre-registered public client `querygate-cli` (no secret,
redirect http://127.0.0.1/callback), seeded in the token storage, so there is no dynamic
registration. Needs the SDK (requirements-mcp.txt, .venv-mcp) and Node on PATH.

    async with oauth_client_session(mcp_url, issuer, "alice", "alice-pw") as (session, auth):
        await session.list_tools()
        auth.access_token        # the JWT the SDK got; auth.authorization_url what it asked
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

CLIENT_JS = Path(__file__).resolve().parent.parent / "oidc" / "client.js"
CLIENT_ID = "querygate-cli"
REDIRECT_URI = "http://127.0.0.1/callback"


class MemoryAuth:
    """The SDK's TokenStorage, in memory, seeded with `querygate-cli`; also what the flow did."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info = OAuthClientInformationFull(
            client_id=CLIENT_ID, token_endpoint_auth_method="none", redirect_uris=[REDIRECT_URI],
            grant_types=["authorization_code"], response_types=["code"])
        self.authorization_url: str | None = None  # built by the SDK
        self.callback_url: str | None = None  # where the provider sent the browser back

    @property
    def access_token(self) -> str | None:
        return self.tokens.access_token if self.tokens else None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@contextlib.asynccontextmanager
async def oauth_client_session(
    mcp_url: str, issuer: str, user: str, password: str,
) -> AsyncIterator[tuple[ClientSession, MemoryAuth]]:
    """An initialized `ClientSession` on `mcp_url`, logged in as USER at the provider `issuer`
    (the SDK finds it on its own; the authorization URL it builds must be on that issuer)."""
    auth = MemoryAuth()

    async def redirect_handler(url: str) -> None:
        auth.authorization_url = url
        if not url.startswith(issuer.rstrip("/") + "/"):
            raise RuntimeError(f"the SDK went to {url}, not to the provider {issuer}")
        proc = await asyncio.create_subprocess_exec(
            "node", str(CLIENT_JS), "authorize", url, user, password,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"login at the provider failed: {err.decode().strip()}")
        auth.callback_url = out.decode().strip()

    async def callback_handler() -> tuple[str, str | None]:
        query = parse_qs(urlsplit(auth.callback_url or "").query)
        return query["code"][0], query.get("state", [None])[0]

    provider = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name=CLIENT_ID, redirect_uris=[REDIRECT_URI], token_endpoint_auth_method="none",
            grant_types=["authorization_code"], response_types=["code"]),
        storage=auth, redirect_handler=redirect_handler, callback_handler=callback_handler)
    async with httpx.AsyncClient(auth=provider, timeout=httpx.Timeout(30, read=300)) as http:
        async with streamable_http_client(mcp_url, http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session, auth
