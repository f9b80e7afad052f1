"""Shared constants and helpers for the querygate end-to-end tests.

Imported by conftest.py and the test modules (pytest puts this directory on
sys.path because the e2e tests are not a package).
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import secrets
import subprocess
import textwrap
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent

#: "gateway" (default) or "emulator": the self-check mode with no gateway in between.
TARGET = os.environ.get("QUERYGATE_E2E_TARGET", "gateway")
DIRECT = TARGET == "emulator"

PROJECT = "test-project"
DATASET = "shop"
TABLE = "customers"
TABLE_ID = f"{PROJECT}.{DATASET}.{TABLE}"
TABLE_SQL = f"`{TABLE_ID}`"
IDENTITY = "agent:claude-code"
GROUPS = ["agents"]
SOURCE = "analytics"

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken",
          "Frances", "Dennis", "Radia", "John"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton",
         "Thompson", "Allen", "Ritchie", "Perlman", "Backus"]

#: The 12 seed rows of shop.customers, in id order.
CUSTOMERS = [
    {
        "id": i,
        "name": f"{_FIRST[i - 1]} {_LAST[i - 1]}",
        "email": f"{_FIRST[i - 1].lower()}.{_LAST[i - 1].lower()}@example.com",
        "score": round(i * 7.25, 2),
        "created": f"2024-01-{i:02d}T08:30:00Z",
    }
    for i in range(1, 13)
]


def created_dt(row: dict) -> dt.datetime:
    return dt.datetime.fromisoformat(row["created"].replace("Z", "+00:00"))


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (closed again; the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Child pre-exec: get SIGTERM if pytest dies, so no server outlives a crashed run."""
    os.setsid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - not Linux/glibc: best effort only
        pass


@dataclass
class Server:
    """A child process we started, with its combined stdout/stderr in a log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Server":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_die_with_parent,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, limit: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        text = data.decode("utf-8", "replace")
        return text if len(text) <= limit else "...(truncated)...\n" + text[-limit:]

    def wait_http(self, url: str, timeout: float, ok=lambda r: r.status_code == 200) -> None:
        deadline = time.monotonic() + timeout
        last = "no response"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with code {self.proc.returncode} before {url} answered.\n"
                    f"--- {self.name} log ({self.log_path}) ---\n{self.log_text()}"
                )
            try:
                r = requests.get(url, timeout=1)
                if ok(r):
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}"
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not ready: {url} gave {last} after {timeout:.0f}s.\n"
            f"--- {self.name} log ({self.log_path}) ---\n{self.log_text()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM our own process group (we made it with setsid), then SIGKILL."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace)
        with contextlib.suppress(Exception):
            self._log.close()


def default_gateway_bin() -> Path:
    explicit = os.environ.get("QUERYGATE_BIN")
    if explicit:
        return Path(explicit)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "querygate", "target")
    return Path(target) / "debug" / "querygate"


def write_gateway_config(path: Path, *, listen_port: int, store: Path, key_sha256: str,
                         emulator_url: str) -> Path:
    path.write_text(
        "[server]\n"
        f'bigquery_listen = "127.0.0.1:{listen_port}"\n'
        "\n[store]\n"
        f'path = "{store}"\n\n'
        + api_key_toml(IDENTITY, GROUPS, key_sha256)
        + bigquery_source_toml(emulator_url)
        + POLICY
    )
    return path


def api_key_toml(identity: str, groups: list[str], key_sha256: str) -> str:
    """An `[[api_keys]]` entry, with a blank line after it."""
    return (f'[[api_keys]]\nidentity = "{identity}"\ngroups = {json.dumps(groups)}\n'
            f'key_sha256 = "{key_sha256}"\n\n')


def bigquery_source_toml(endpoint: str) -> str:
    """The `[[sources]]` entry of the e2e gateways: SOURCE, a bigquery source of PROJECT at
    `endpoint` with no upstream credentials."""
    return (f'[[sources]]\nname = "{SOURCE}"\nkind = "bigquery"\nproject = "{PROJECT}"\n'
            f'endpoint = "{endpoint}"\ncredentials = "none"\n')


#: The policy the e2e gateway runs: the documented example, minus the partition rule.
#: Every query is dry-run against the emulator for `bytes_over` (it reports 0 bytes).
POLICY = """
[[rule]]
name = "agents never write"
who = ["group:agents"]
statements = ["insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant", "export", "copy"]
action = "deny"
message = "agents have read-only access; ask a person to run this change"

[[rule]]
name = "large scans need an owner"
who = ["group:agents"]
when = { bytes_over = "10 GiB" }
action = "approve"
approvers = ["group:data-owners"]

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select"]
action = "allow"
max_bytes_billed = "1 TiB"
"""


def has_local() -> bool:
    """Whether the gateway binary was built with the embedded engine (the default feature
    `local`): its `demo` command exists."""
    if DIRECT:
        return False
    cp = run_cli(default_gateway_bin(), "--help")
    return cp.returncode == 0 and "\n  demo " in cp.stdout


def run_cli(binary: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `querygate ARGS...`, capturing text output."""
    return subprocess.run([str(binary), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def describe(cp: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(map(str, cp.args))}\nexit {cp.returncode}\n"
            f"--- stdout ---\n{cp.stdout[-4000:]}\n--- stderr ---\n{cp.stderr[-4000:]}")


def make_client(endpoint: str, token: str | None):
    """The Python client as a user configures it for querygate (token=None: anonymous)."""
    import google.oauth2.credentials
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    creds = AnonymousCredentials() if token is None else google.oauth2.credentials.Credentials(token=token)
    return bigquery.Client(project=PROJECT, credentials=creds, client_options={"api_endpoint": endpoint})


BYTES = re.compile(r"/\*bytes=(\d+)\*/")


def byte_shim(upstream: str):
    """An HTTP server that forwards everything to `upstream` (bqemulator, which reports 0
    bytes for everything) and only rewrites byte counts: a query carrying the comment
    `/*bytes=N*/` is reported as processing (dry run) and billing (real run) N bytes."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            req = urllib.request.Request(upstream + self.path, data=body, method=self.command,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    status, data = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
            sql = ""
            if body:
                try:
                    doc = json.loads(body)
                    sql = doc.get("query") or doc.get("configuration", {}).get("query", {}).get("query", "")
                except ValueError:
                    pass
            m = BYTES.search(sql or "")
            if m and status == 200:
                out = json.loads(data)
                n = m.group(1)
                out["totalBytesProcessed"] = n
                out["totalBytesBilled"] = n
                data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _forward

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


#: The test OpenID provider (oidc-provider from npm) and its token client.
OIDC_DIR = REPO_ROOT / "tests" / "oidc"


class Idp:
    """The running provider: tokens the way real clients get them, and forged ones."""

    def __init__(self, server: Server, issuer: str, keys_dir):
        self.server, self.issuer, self.keys_dir = server, issuer, keys_dir

    def token(self, *args: str, resource: str | None = None) -> str:
        env = dict(os.environ, **({"QG_RESOURCE": resource} if resource else {}))
        cp = subprocess.run(["node", str(OIDC_DIR / "client.js"), args[0], self.issuer, *args[1:]],
                            capture_output=True, text=True, timeout=30, env=env)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout.strip()

    def agent(self) -> str:
        return self.token("agent", "claude-code", "agent-secret")

    def login(self, user: str) -> str:
        return self.token("login", user, f"{user}-pw")

    def exchange(self, person_token: str) -> str:
        return self.token("exchange", "claude-code", "agent-secret", person_token)

    def forge(self, claims: dict) -> str:
        """Signs claims with the provider's own key (what a misconfigured IdP could issue)."""
        from google.auth import crypt, jwt

        signer = crypt.RSASigner.from_string((self.keys_dir / "signing-key.pem").read_text(),
                                             key_id=(self.keys_dir / "kid.txt").read_text())
        return jwt.encode(signer, claims).decode()


VENV_MCP = HERE / ".venv-mcp" / "bin"

MCP_DRIVER = textwrap.dedent("""
    # Drives querygate's MCP front with the official MCP Python SDK: list the tools, then
    # make each call given, and print what the agent would read.
    import asyncio, json, sys
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async def main():
        url, key, calls = sys.argv[1], sys.argv[2], sys.argv[3]
        calls = json.loads(open(calls[1:]).read() if calls.startswith("@") else calls)
        headers = {"Authorization": f"Bearer {key}"}
        async with streamablehttp_client(url, headers=headers) as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                results = []
                for tool, arguments in calls:
                    r = await session.call_tool(tool, arguments)
                    results.append({
                        "is_error": bool(r.isError),
                        "structured": r.structuredContent,
                        "texts": [c.text for c in r.content if getattr(c, "type", "") == "text"],
                    })
                print(json.dumps({"tools": tools, "results": results}))

    asyncio.run(main())
""")


def mcp_drive(gateway: dict, who: str, calls: list) -> dict:
    """Makes `calls` ([tool, arguments] pairs) on the MCP front at gateway["url"] as
    gateway["keys"][who], with the official MCP Python SDK; what the agent read."""
    text = json.dumps(calls)
    if len(text) > 100_000:  # past what one argv string may hold: through a file
        path = gateway["config"].parent / f"calls-{secrets.token_hex(4)}.json"
        path.write_text(text)
        text = f"@{path}"
    cp = subprocess.run([str(VENV_MCP / "python"), "-c", MCP_DRIVER, gateway["url"], gateway["keys"][who],
                         text], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, f"driver failed:\n{cp.stderr[-3000:]}\n--- log ---\n{gateway['server'].log_text()}"
    return json.loads(cp.stdout.strip().splitlines()[-1])
