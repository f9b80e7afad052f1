"""The MCP front as an OAuth 2.1 resource server, with the real OpenID provider the identity
tests run (tests/oidc/server.js, oidc-provider from npm) and the official MCP Python SDK's
own OAuth client.

Topology (all on 127.0.0.1):

    MCP Python SDK (OAuthClientProvider) ──401, metadata, discovery──> querygate /mcp
        │ authorization code + PKCE, resource = querygate's /mcp URL   (local source)
        ▼
    oidc-provider ── JWT, aud = the /mcp URL ──> the SDK ──Bearer──> querygate

The login at the provider is scripted (tests/oidc/client.js authorize); everything else is
what the SDK does on its own: it reads `resource_metadata` from the 401, fetches the
protected-resource metadata, discovers the provider, and asks for a token for the resource.
A token for another audience (the REST front's), an expired one and one from an issuer the
resource does not name are refused with 401 `invalid_token` saying why, and audited.
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time

import pytest
import requests

import e2e_support as s

pytestmark = pytest.mark.gateway_only

VENV_MCP = s.HERE / ".venv-mcp" / "bin"

if not s.has_local():
    pytest.skip("querygate was built without the embedded engine", allow_module_level=True)

PROJECT = "mcp-oauth"

DRIVER = textwrap.dedent("""
    # Logs in with the MCP SDK's OAuth client and calls tools; prints what it got.
    import asyncio, base64, json, sys
    sys.path.insert(0, sys.argv[1])
    from mcp_oauth import oauth_client_session

    def claims(token):
        part = token.split(".")[1]
        return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))

    async def main():
        url, issuer, user = sys.argv[2], sys.argv[3], sys.argv[4]
        async with oauth_client_session(url, issuer, user, user + "-pw") as (session, auth):
            tools = [t.name for t in (await session.list_tools()).tools]
            results = []
            for tool, arguments in json.loads(sys.argv[5]):
                r = await session.call_tool(tool, arguments)
                results.append({"is_error": bool(r.isError), "structured": r.structuredContent,
                                "texts": [c.text for c in r.content if getattr(c, "type", "") == "text"]})
            print(json.dumps({"tools": tools, "results": results, "claims": claims(auth.access_token),
                              "authorization_url": auth.authorization_url}))

    asyncio.run(main())
""")

CONFIG = """
[server]
bigquery_listen = "127.0.0.1:{port}"
mcp_listen = "127.0.0.1:{mcp_port}"

[store]
path = "querygate.db"

[[oidc]]
issuer = "{issuer}"
audiences = ["querygate"]
groups_claim = "groups"
kind_claim = "kind"
kind = "human"
jwks_min_interval = "1s"

[mcp]
resource = "{resource}"
authorization_servers = ["{issuer}"]

[[sources]]
name = "files"
kind = "local"
project = "{project}"
tables = {{ "shop.customers" = "customers.csv" }}

[[rule]]
name = "engineers read"
who = ["group:engineers"]
statements = ["select"]
action = "allow"
"""


@pytest.fixture(scope="module")
def gateway(idp, e2e_tmp):
    work = e2e_tmp / "mcp-oauth"
    work.mkdir(parents=True)
    (work / "customers.csv").write_text("id,name\n1,Ana Lima\n2,Bo Chen\n")
    port, mcp_port = s.free_port(), s.free_port()
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    config = work / "querygate.toml"
    config.write_text(CONFIG.format(port=port, mcp_port=mcp_port, issuer=idp.issuer, resource=resource,
                                    project=PROJECT))
    server = s.Server(name="querygate-mcp-oauth",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=dict(os.environ, NO_COLOR="1"), cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield {"url": resource, "rest": f"http://127.0.0.1:{port}", "config": config, "server": server}
    finally:
        server.stop()


def drive(gateway, idp, user: str, calls: list) -> dict:
    cp = subprocess.run([str(VENV_MCP / "python"), "-c", DRIVER, str(s.HERE), gateway["url"], idp.issuer, user,
                         json.dumps(calls)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-3000:] + "\n" + gateway["server"].log_text()[-2000:]
    return json.loads(cp.stdout.strip().splitlines()[-1])


def initialize(gateway, token: str) -> requests.Response:
    return requests.post(gateway["url"], timeout=30, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "probe", "version": "0"}}})


def audit(gateway) -> list[dict]:
    cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gateway["config"]), "--json")
    return [json.loads(line) for line in cp.stdout.splitlines()]


def test_an_mcp_client_discovers_logs_in_and_calls_tools_as_the_person(gateway, idp):
    out = drive(gateway, idp, "alice", [
        ["list_dataset_ids", {}],
        ["execute_sql", {"sql": "SELECT id, name FROM shop.customers ORDER BY id"}],
    ])
    # The SDK found the provider through the 401 and asked for a token for this resource.
    assert f"resource={requests.utils.quote(gateway['url'], safe='')}" in out["authorization_url"]
    assert out["claims"]["aud"] == gateway["url"] and out["claims"]["iss"] == idp.issuer
    assert "execute_sql" in out["tools"]
    listing, rows = out["results"]
    assert listing["structured"] == {"dataset_ids": ["shop"]}
    assert not rows["is_error"], rows
    assert rows["structured"]["rows"] == [{"id": 1, "name": "Ana Lima"}, {"id": 2, "name": "Bo Chen"}]
    # Audited as the person the token names, under the tool's name; never the token.
    records = audit(gateway)
    ran = [r for r in records if r.get("method") == "execute_sql" and r.get("phase") == "completed"]
    assert ran and ran[-1]["identity"] == "alice", ran
    assert out["claims"]["sub"] == "alice"


def test_a_person_the_rules_do_not_name_is_refused_by_policy_not_by_oauth(gateway, idp):
    out = drive(gateway, idp, "bob", [["execute_sql", {"sql": "SELECT id FROM shop.customers"}]])
    (refused,) = out["results"]
    assert refused["is_error"] and "Access Denied" in refused["texts"][0], refused


@pytest.mark.parametrize("case", ["rest audience", "expired", "unknown issuer", "not a token"])
def test_tokens_not_issued_for_this_resource_get_401_invalid_token(gateway, idp, case):
    now = int(time.time())
    token, says = {
        # A real token from the provider, but for the REST front (aud "querygate").
        "rest audience": (lambda: idp.agent(), "audience"),
        "expired": (lambda: idp.forge({"iss": idp.issuer, "sub": "alice", "aud": gateway["url"],
                                       "iat": now - 900, "exp": now - 600, "groups": ["engineers"]}), "expired"),
        "unknown issuer": (lambda: idp.forge({"iss": "http://127.0.0.1:9/other-idp", "sub": "alice",
                                              "aud": gateway["url"], "iat": now, "exp": now + 300}),
                           "does not issue tokens for"),
        "not a token": (lambda: "qg_not_a_key", "not a querygate API key"),
    }[case]
    r = initialize(gateway, token())
    assert r.status_code == 401, r.text
    challenge = r.headers["WWW-Authenticate"]
    assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge, challenge
    assert says in r.json()["error_description"], r.json()


def test_a_token_for_the_resource_is_not_accepted_at_the_rest_front(gateway, idp):
    token = idp.token("agent", "claude-code", "agent-secret", resource=gateway["url"])
    r = initialize(gateway, token)
    assert r.status_code == 200, r.text
    rest = requests.get(f"{gateway['rest']}/bigquery/v2/projects/{PROJECT}/datasets", timeout=30,
                        headers={"Authorization": f"Bearer {token}"})
    assert rest.status_code in (401, 403) and "audience" in rest.text, rest.text


def test_refused_credentials_are_audited_without_the_token(gateway, idp):
    token = idp.agent()
    assert initialize(gateway, token).status_code == 401
    records = audit(gateway)
    refused = [r for r in records if r.get("method") == "mcp" and r.get("status") == 401]
    assert refused, records[-3:]
    assert token not in json.dumps(records)
