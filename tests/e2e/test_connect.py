"""`querygate connect`: tools that only use Google's default credentials, unchanged.

`querygate connect --config … --key …` writes an `external_account_authorized_user`
credentials file (refresh token: the API key; token_url: the gateway's token endpoint) and
prints `export` lines for GOOGLE_APPLICATION_CREDENTIALS, BIGQUERY_EMULATOR_HOST and
GOOGLE_CLOUD_PROJECT. Each tool below runs in a subprocess whose environment is exactly
those lines plus PATH and a fresh, empty HOME (so no gcloud or other credentials can help),
and builds its BigQuery client the way it always does:

* a plain Python `bigquery.Client(project=…)` (and `bigquery.Client()`),
* a plain Node `new BigQuery()`,
* two MCP servers, driven by the official MCP Python SDK's stdio client: bq-readonly-mcp
  (PyPI, `google.auth.default()` + `bigquery.Client`) and @ergut/mcp-bigquery-server (npm,
  `new BigQuery({projectId})`),
* dbt-bigquery with a `method: oauth` profile: `dbt debug`, `dbt show`, and a `dbt run` that
  the policy refuses (agents never write).

Each asserts that the statement went through the gateway (the audit log holds it under the
key's identity) and that `shop.customers.email`, masked for the connecting identity, comes
back masked. Then: bad and revoked keys at the token endpoint (`invalid_grant`, audited as
`unauthenticated`), a token that outlives its key's revocation, and the whole thing over TLS.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import requests

import e2e_support as s

pytestmark = pytest.mark.gateway_only

IDENTITY = "agent:connect-bot"
TOKEN_PATH = "/querygate/oauth2/token"
MASKING = """
[[classify]]
tag = "contact"
columns = ["*.shop.customers.email"]

[[mask]]
tag = "contact"
strategy = "email_domain"
unmasked_for = ["group:privacy"]
"""
#: Before the e2e policy's rules: dbt may build views of shop.customers in dbt_sandbox.
SANDBOX_RULE = f"""
[[rule]]
name = "dbt builds views in dbt_sandbox"
who = ["identity:{IDENTITY}"]
statements = ["create", "select"]
tables = ["*.dbt_sandbox.*", "*.shop.customers"]
action = "allow"
"""
NODE_DIR = s.HERE / "node"
MCP_NODE = s.HERE / "mcp-node" / "node_modules" / "@ergut" / "mcp-bigquery-server" / "dist" / "index.js"
VENV_MCP = s.HERE / ".venv-mcp" / "bin"
VENV_DBT = s.HERE / ".venv-dbt" / "bin"
RAW_EMAILS = {c["email"] for c in s.CUSTOMERS}
MASKED_EMAIL = re.compile(r"^\*+@example\.com$")


# ------------------------------------------------------------------ the gateway

def start_gateway(workdir: Path, emulator_url: str, key: str, tls: tuple[Path, Path] | None = None):
    workdir.mkdir(parents=True)
    port = s.free_port()
    config = s.write_gateway_config(workdir / "querygate.toml", listen_port=port,
                                    store=workdir / "querygate.db", key_sha256=s.sha256_hex(key),
                                    emulator_url=emulator_url)
    text = config.read_text().replace(f'identity = "{s.IDENTITY}"', f'identity = "{IDENTITY}"', 1)
    if tls:
        text = text.replace("[server]\n", f'[server]\ntls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n', 1)
    text = text.replace("\n[[rule]]\n", SANDBOX_RULE + "\n[[rule]]\n", 1)
    config.write_text(text + MASKING)
    server = s.Server(name=f"querygate-{workdir.name}",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env={**os.environ, "NO_COLOR": "1"},
                      cwd=workdir).start()
    scheme = "https" if tls else "http"
    verify = str(tls[0]) if tls else True
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{scheme}://127.0.0.1:{port}/healthz", timeout=1, verify=verify).ok:
                break
        except requests.RequestException:
            pass
        if not server.alive() or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"gateway did not start:\n{server.log_text()}")
        time.sleep(0.1)
    return server, config, f"{scheme}://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gw(seeded, emulator, e2e_tmp):
    key = "qg_e2e_connect_" + secrets.token_urlsafe(16)
    server, config, url = start_gateway(e2e_tmp / "connect", emulator.url, key)
    try:
        yield {"key": key, "config": config, "url": url, "server": server, "dir": e2e_tmp / "connect"}
    finally:
        server.stop()


# ------------------------------------------------------------------ helpers

def connect(gw, key: str, out: Path, *extra: str) -> dict[str, str]:
    """Runs `querygate connect` and returns the variables its export lines set."""
    cp = s.run_cli(s.default_gateway_bin(), "connect", "--config", str(gw["config"]),
                   "--key", key, "--dir", str(out), *extra)
    assert cp.returncode == 0, s.describe(cp)
    assert key not in cp.stdout and key not in cp.stderr, "connect printed the key"
    env = {}
    for line in cp.stdout.splitlines():
        m = re.fullmatch(r"export ([A-Z_]+)=(\S+)", line)
        assert m, f"not an export line: {line!r}\n{s.describe(cp)}"
        env[m.group(1)] = m.group(2)
    first = "CLOUDSDK_CONFIG" if "--gcloud-config" in extra else "GOOGLE_APPLICATION_CREDENTIALS"
    assert list(env) == [first, "BIGQUERY_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"]
    return env


def clean_env(exports: dict[str, str], home: Path, **extra: str) -> dict[str, str]:
    """Only the exported variables, PATH and an empty HOME (no gcloud, no other ADC)."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), **exports, **extra}


def run(argv, env, cwd=None, timeout=120, check=True) -> subprocess.CompletedProcess:
    cp = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert cp.returncode == 0, s.describe(cp)
    return cp


def audit(gw, marker: str, want: int = 1, timeout: float = 10) -> list[dict]:
    """The audit records whose statement holds `marker` (waiting for completion records)."""
    deadline = time.monotonic() + timeout
    while True:
        cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gw["config"]),
                       "--text", marker, "--json")
        assert cp.returncode == 0, s.describe(cp)
        records = [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]
        if len(records) >= want or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def token_records(gw) -> list[dict]:
    cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gw["config"]),
                   "--method", "oauth.token", "--json")
    assert cp.returncode == 0, s.describe(cp)
    return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


def assert_through_gateway(gw, marker: str, identity: str = IDENTITY, method: str | None = None):
    records = audit(gw, marker)
    assert records, f"no audit record holds {marker!r}: the query did not go through the gateway"
    allowed = [r for r in records if r["decision"] == "allow"]
    assert allowed, records
    assert {r["identity"] for r in records} == {identity}, records
    assert all(marker in (r.get("statement") or "") for r in records)
    if method:
        assert any(r["method"] == method for r in records), records
    # The masking rewrite went upstream, not the statement as written.
    assert any("email" in (r.get("rewritten") or "") for r in allowed), allowed
    return records


def assert_masked(emails):
    emails = list(emails)
    assert emails, "no rows"
    for e in emails:
        assert e not in RAW_EMAILS, f"unmasked email {e!r}"
        assert MASKED_EMAIL.match(e), f"not the email_domain mask: {e!r}"


def marker_sql(marker: str) -> str:
    return (f"SELECT id, email FROM `{s.TABLE_ID}` WHERE id <= 3 /* {marker} */ ORDER BY id")


# ------------------------------------------------------------------ connect itself

def test_connect_writes_a_private_file_and_prints_only_the_environment(gw, tmp_path):
    env = connect(gw, gw["key"], tmp_path / "creds")
    path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
    assert path.is_absolute() and path.parent == tmp_path / "creds"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert doc == {
        "type": "external_account_authorized_user",
        "client_id": "querygate",
        "client_secret": doc["client_secret"],
        "refresh_token": gw["key"],
        "token_url": gw["url"] + TOKEN_PATH,
    }
    assert env["BIGQUERY_EMULATOR_HOST"] == gw["url"]
    assert env["GOOGLE_CLOUD_PROJECT"] == s.PROJECT
    # The key is not in the gateway's log either, nor the tokens it issued.
    assert gw["key"] not in gw["server"].log_text(limit=10**7)


def test_connect_refuses_a_key_the_gateway_does_not_know(gw, tmp_path):
    bogus = "qg_bogus_" + secrets.token_urlsafe(12)
    cp = s.run_cli(s.default_gateway_bin(), "connect", "--config", str(gw["config"]), "--key", bogus,
                   "--dir", str(tmp_path))
    assert cp.returncode != 0 and "not one of the gateway's API keys" in cp.stderr, s.describe(cp)
    assert bogus not in cp.stderr + cp.stdout
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the tools

PY_PLAIN = textwrap.dedent("""
    import json, os, sys
    from google.cloud import bigquery
    client = bigquery.Client(project=sys.argv[2]) if sys.argv[2] else bigquery.Client()
    rows = [dict(r.items()) for r in client.query_and_wait(sys.argv[1])]
    print(json.dumps({"project": client.project, "rows": rows}, default=str))
""")


@pytest.mark.parametrize("project_arg", [s.PROJECT, ""], ids=["Client(project=...)", "Client()"])
def test_plain_python_client(gw, tmp_path, project_arg):
    env = clean_env(connect(gw, gw["key"], tmp_path / "creds"), tmp_path / "home")
    marker = f"py-plain-{secrets.token_hex(4)}"
    cp = run([s.HERE / ".venv-client" / "bin" / "python", "-c", PY_PLAIN, marker_sql(marker), project_arg], env)
    out = json.loads(cp.stdout)
    assert out["project"] == s.PROJECT
    assert [r["id"] for r in out["rows"]] == [1, 2, 3]
    assert_masked(r["email"] for r in out["rows"])
    assert_through_gateway(gw, marker, method="jobs.query")
    issued = [r for r in token_records(gw) if r["decision"] == "allow"]
    assert issued and all(r["identity"] == IDENTITY and r["status"] == 200 for r in issued)


NODE_PLAIN = textwrap.dedent("""
    const {BigQuery} = require('@google-cloud/bigquery');
    (async () => {
      const bigquery = new BigQuery();
      const [rows] = await bigquery.query({query: process.argv[1]});
      console.log(JSON.stringify({project: await bigquery.getProjectId(), rows}));
    })().catch(e => { console.error(e); process.exit(1); });
""")


def test_plain_node_client(gw, tmp_path):
    env = clean_env(connect(gw, gw["key"], tmp_path / "creds"), tmp_path / "home")
    marker = f"node-plain-{secrets.token_hex(4)}"
    cp = run(["node", "-e", NODE_PLAIN, marker_sql(marker)], env, cwd=NODE_DIR)
    out = json.loads(cp.stdout)
    assert out["project"] == s.PROJECT
    assert [int(r["id"]) for r in out["rows"]] == [1, 2, 3]
    assert_masked(r["email"] for r in out["rows"])
    assert_through_gateway(gw, marker)


MCP_DRIVER = textwrap.dedent("""
    # Drives an MCP server over stdio with the official MCP Python SDK: list tools, call one.
    import asyncio, json, os, sys
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main():
        command, args, tool, arguments = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
        params = StdioServerParameters(command=command, args=args, env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                result = await session.call_tool(tool, arguments)
                texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
                print(json.dumps({"tools": tools, "is_error": bool(result.isError), "texts": texts}))

    asyncio.run(main())
""")


def drive_mcp(env, command, args, tool, arguments, cwd=None):
    cp = run([VENV_MCP / "python", "-c", MCP_DRIVER, command, json.dumps(args), tool, json.dumps(arguments)],
             env, cwd=cwd, timeout=180)
    return json.loads(cp.stdout.strip().splitlines()[-1])


def test_mcp_server_from_pypi(gw, tmp_path):
    """bq-readonly-mcp: `google.auth.default()` then `bigquery.Client(project=…)`.

    It reads GOOGLE_APPLICATION_CREDENTIALS as its own `--key-file` and loads it as a
    service-account key (bq_readonly_mcp/config.py, auth.py), so it gets the credentials
    where gcloud keeps them instead: `connect --gcloud-config` (CLOUDSDK_CONFIG)."""
    exports = connect(gw, gw["key"], tmp_path / "gcloud", "--gcloud-config")
    assert (Path(exports["CLOUDSDK_CONFIG"]) / "application_default_credentials.json").is_file()
    env = clean_env(exports, tmp_path / "home")
    marker = f"mcp-py-{secrets.token_hex(4)}"
    out = drive_mcp(env, str(VENV_MCP / "bq-readonly-mcp"), ["--project", s.PROJECT, "--datasets", s.DATASET],
                    "run_query", {"query": marker_sql(marker)})
    assert "run_query" in out["tools"], out
    assert not out["is_error"], out
    result = json.loads(out["texts"][0])
    assert [r["id"] for r in result["rows"]] == [1, 2, 3], result
    assert_masked(r["email"] for r in result["rows"])
    # Its cost guard's dry run and then the query (with the LIMIT it adds): both through the gateway.
    records = assert_through_gateway(gw, marker)
    assert len({r["request_id"] for r in records}) >= 2, records


def test_mcp_server_from_npm(gw, tmp_path):
    """@ergut/mcp-bigquery-server: `new BigQuery({projectId})` (the Node client, 7.x)."""
    env = clean_env(connect(gw, gw["key"], tmp_path / "creds"), tmp_path / "home")
    config = tmp_path / "mcp-config.json"
    config.write_text(json.dumps({"protectionMode": "off", "maximumBytesBilled": "1000000000"}))
    marker = f"mcp-node-{secrets.token_hex(4)}"
    out = drive_mcp(env, "node", [str(MCP_NODE), "--project-id", s.PROJECT, "--location", "US",
                                  "--config-file", str(config)],
                    "query", {"sql": marker_sql(marker)}, cwd=tmp_path)
    assert out["tools"] == ["query"], out
    assert not out["is_error"], out
    rows = json.loads(out["texts"][0])
    assert [int(r["id"]) for r in rows] == [1, 2, 3], out
    assert_masked(r["email"] for r in rows)
    assert_through_gateway(gw, marker)


DBT_PROJECT = """
name: querygate_connect
version: "1.0"
config-version: 2
profile: querygate
flags:
  send_anonymous_usage_stats: false
  use_colors: false
"""
DBT_PROFILES = f"""
querygate:
  target: dev
  outputs:
    dev:
      type: bigquery
      method: oauth
      project: {s.PROJECT}
      dataset: {s.DATASET}
      threads: 1
      job_execution_timeout_seconds: 60
      job_retries: 0
"""


@pytest.fixture(scope="module")
def dbt_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("dbt")
    (root / "models").mkdir()
    (root / "dbt_project.yml").write_text(DBT_PROJECT)
    (root / "profiles.yml").write_text(DBT_PROFILES)
    return root


def dbt(env, project: Path, *args, check=True):
    return run([VENV_DBT / "dbt", *args, "--profiles-dir", project, "--project-dir", project],
               env, cwd=project, timeout=300, check=check)


def test_dbt_debug_and_show(gw, tmp_path, dbt_project):
    env = clean_env(connect(gw, gw["key"], tmp_path / "creds"), tmp_path / "home")
    marker = f"dbt-show-{secrets.token_hex(4)}"
    (dbt_project / "models" / "customer_emails.sql").write_text(
        f"select id, email from `{s.TABLE_ID}` where id <= 3 /* {marker} */\n")
    debug = dbt(env, dbt_project, "debug", check=False)
    # dbt's credentials and endpoint work: its connection test went through the gateway,
    # authenticated as the key's identity, and was run.
    assert "method: oauth" in debug.stdout, s.describe(debug)
    tested = audit(gw, "select 1 as id", want=2)
    assert tested and {r["identity"] for r in tested} == {IDENTITY}, tested
    assert any(r["decision"] == "allow" and r["phase"] == "completed" and r.get("status") == 200
               for r in tested), tested
    show = dbt(env, dbt_project, "show", "--select", "customer_emails", "--limit", "3", "--output", "json",
               "--log-format", "text", check=False)
    records = assert_through_gateway(gw, marker)
    assert any(r["phase"] == "completed" and r.get("status") == 200 for r in records), records
    # dbt reads every SELECT's anonymous result table (`client.get_table(query_job.
    # destination)`, for its row count): the gateway shows that table to dbt-bigquery's
    # user agent (and serves its tables.get to the job's owner only).
    assert debug.returncode == 0 and show.returncode == 0, s.describe(debug) + s.describe(show)
    assert "All checks passed" in debug.stdout, s.describe(debug)
    m = re.search(r"^\{.*^\}", show.stdout, re.S | re.M)
    assert m, s.describe(show)
    rows = json.loads(m.group(0))["show"]
    assert sorted(int(r["id"]) for r in rows) == [1, 2, 3], rows
    assert_masked(r["email"] for r in rows)


def test_dbt_run(gw, tmp_path, dbt_project, emu_client):
    """`dbt run` builds a view where the policy lets this identity create one, and is
    refused, with the gateway's reason, where masking or the policy says no."""
    from google.cloud import bigquery

    emu_client.create_dataset(bigquery.Dataset(f"{s.PROJECT}.dbt_sandbox"), exists_ok=True)
    env = clean_env(connect(gw, gw["key"], tmp_path / "creds"), tmp_path / "home")
    ok, masked = f"dbt-run-{secrets.token_hex(4)}", f"dbt-masked-{secrets.token_hex(4)}"
    models = dbt_project / "models"
    (models / "customer_emails.sql").unlink(missing_ok=True)
    (models / "customer_names.sql").write_text(
        "{{ config(materialized='view', schema='sandbox') }}\n"
        f"select id, name from `{s.TABLE_ID}` /* {ok} */\n")
    (models / "customer_contacts.sql").write_text(
        "{{ config(materialized='view', schema='sandbox') }}\n"
        f"select id, email from `{s.TABLE_ID}` /* {masked} */\n")
    (dbt_project / "macros").mkdir(exist_ok=True)
    # The models' schema is dbt_sandbox as written (not dbt's <target>_<schema>).
    (dbt_project / "macros" / "schema.sql").write_text(
        "{% macro generate_schema_name(custom, node) %}dbt_{{ custom | trim }}{% endmacro %}\n")
    run_ok = dbt(env, dbt_project, "run", "--select", "customer_names", check=False)
    assert run_ok.returncode == 0, s.describe(run_ok)
    records = audit(gw, ok)
    assert {r["identity"] for r in records} == {IDENTITY}, records
    assert any(r["decision"] == "allow" and r.get("rule") == "dbt builds views in dbt_sandbox"
               for r in records), records
    assert emu_client.get_table(f"{s.PROJECT}.dbt_sandbox.customer_names").table_type == "VIEW"
    # A view of the masked column would take it out of masking: refused, and dbt shows why.
    run_masked = dbt(env, dbt_project, "run", "--select", "customer_contacts", check=False)
    assert run_masked.returncode != 0, s.describe(run_masked)
    assert "masked for agent:connect-bot" in run_masked.stdout, s.describe(run_masked)
    refused = audit(gw, masked)
    assert refused and all(r["identity"] == IDENTITY and r["decision"] == "deny" for r in refused), refused


# ------------------------------------------------------------------ bad and revoked keys

def post_token(url, refresh_token, **kw):
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return requests.post(url + TOKEN_PATH, data=data, auth=("querygate", "not-a-secret"), timeout=10, **kw)


def test_bad_key_gets_invalid_grant_and_is_audited(gw):
    bogus = "qg_bogus_" + secrets.token_urlsafe(12)
    before = len(token_records(gw))
    r = post_token(gw["url"], bogus)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "invalid_grant", body
    assert "not a querygate API key known to this gateway" in body["error_description"]
    assert bogus not in r.text
    assert r.headers["cache-control"] == "no-store"
    # Other malformed requests: OAuth errors too, each audited.
    assert requests.get(gw["url"] + TOKEN_PATH, timeout=10).status_code == 405
    wrong = requests.post(gw["url"] + TOKEN_PATH, data={"grant_type": "password", "refresh_token": "x"}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"] == "unsupported_grant_type"
    missing = requests.post(gw["url"] + TOKEN_PATH, data={"grant_type": "refresh_token"}, timeout=10)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_request"
    time.sleep(0.2)
    records = token_records(gw)[before:]
    assert [(r["identity"], r["decision"], r["status"]) for r in records] == [
        ("unauthenticated", "deny", 400), ("anonymous", "deny", 405),
        ("unauthenticated", "deny", 400), ("anonymous", "deny", 400)], records
    assert "not a querygate API key" in records[0]["reason"]
    assert all(bogus not in json.dumps(r) for r in records)


def test_a_revoked_key_stops_at_the_token_endpoint_and_on_the_data_path(gw, tmp_path):
    config = str(gw["config"])
    made = s.run_cli(s.default_gateway_bin(), "keys", "new", "--store", "--config", config,
                     "--identity", "agent:short-lived", "--group", "agents")
    assert made.returncode == 0, s.describe(made)
    key = next(line for line in made.stdout.splitlines() if line.startswith("qg_"))
    env = clean_env(connect(gw, key, tmp_path / "creds"), tmp_path / "home")
    marker = f"py-revoke-{secrets.token_hex(4)}"
    py = s.HERE / ".venv-client" / "bin" / "python"
    out = json.loads(run([py, "-c", PY_PLAIN, marker_sql(marker), s.PROJECT], env).stdout)
    assert len(out["rows"]) == 3
    assert_through_gateway(gw, marker, identity="agent:short-lived")
    # A token issued before the revocation...
    token = post_token(gw["url"], key).json()["access_token"]
    assert token.startswith("qgat_") and key not in token
    revoked = s.run_cli(s.default_gateway_bin(), "keys", "revoke", "--config", config, "agent:short-lived")
    assert revoked.returncode == 0, s.describe(revoked)
    # ... is refused from then on: the gateway authenticates the key inside it on every request.
    r = requests.post(f"{gw['url']}/bigquery/v2/projects/{s.PROJECT}/queries",
                      headers={"Authorization": f"Bearer {token}"}, json={"query": "SELECT 1"}, timeout=10)
    assert r.status_code == 403 and "revoked" in r.text, r.text
    # A tool started now cannot refresh: google-auth raises the gateway's invalid_grant.
    cp = run([py, "-c", PY_PLAIN, marker_sql("after-revoke"), s.PROJECT], env, check=False)
    assert cp.returncode != 0
    assert "invalid_grant" in cp.stderr and "revoked" in cp.stderr, s.describe(cp)
    assert key not in cp.stderr
    denied = [r for r in token_records(gw) if r["decision"] == "deny" and "revoked" in (r.get("reason") or "")]
    assert denied and denied[-1]["identity"] == "unauthenticated"
    # And connect itself refuses it.
    cp = s.run_cli(s.default_gateway_bin(), "connect", "--config", config, "--key", key, "--dir", str(tmp_path / "x"))
    assert cp.returncode != 0 and "revoked" in cp.stderr, s.describe(cp)


def test_a_token_from_another_secret_is_refused_and_audited(gw):
    forged = "qgat_" + secrets.token_hex(60)
    r = requests.get(f"{gw['url']}/bigquery/v2/projects/{s.PROJECT}/datasets",
                     headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert r.status_code == 403 and "authError" in r.text, r.text
    cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gw["config"]),
                   "--identity", "unauthenticated", "--method", "datasets.list", "--json")
    assert cp.returncode == 0 and cp.stdout.strip(), s.describe(cp)


def test_the_key_survives_a_restart_of_the_gateway(gw, tmp_path, emulator):
    """Tokens are sealed with a secret kept beside the store: a restarted gateway opens them."""
    token = post_token(gw["url"], gw["key"]).json()["access_token"]
    secret = Path(str(gw["config"].parent / "querygate.db") + ".token-key")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert gw["key"] not in secret.read_text()
    gw["server"].stop()
    gw["server"].start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(gw["url"] + "/healthz", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, gw["server"].log_text()
        time.sleep(0.1)
    r = requests.get(f"{gw['url']}/bigquery/v2/projects/{s.PROJECT}/datasets",
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ over TLS

@pytest.fixture(scope="module")
def tls_gw(seeded, emulator, e2e_tmp):
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    workdir = e2e_tmp / "connect-tls-certs"
    workdir.mkdir()
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "querygate e2e")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(private, hashes.SHA256()))
    cert_path, key_path = workdir / "cert.pem", workdir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    key = "qg_e2e_connect_tls_" + secrets.token_urlsafe(16)
    server, config, url = start_gateway(e2e_tmp / "connect-tls", emulator.url, key, tls=(cert_path, key_path))
    try:
        yield {"key": key, "config": config, "url": url, "server": server, "ca": cert_path}
    finally:
        server.stop()


def test_over_tls_python_and_node(tls_gw, tmp_path):
    exports = connect(tls_gw, tls_gw["key"], tmp_path / "creds")
    assert exports["BIGQUERY_EMULATOR_HOST"].startswith("https://127.0.0.1:")
    doc = json.loads(Path(exports["GOOGLE_APPLICATION_CREDENTIALS"]).read_text())
    assert doc["token_url"].startswith("https://127.0.0.1:")
    ca = str(tls_gw["ca"])
    py_marker, node_marker = f"py-tls-{secrets.token_hex(4)}", f"node-tls-{secrets.token_hex(4)}"
    env = clean_env(exports, tmp_path / "home", REQUESTS_CA_BUNDLE=ca)
    out = json.loads(run([s.HERE / ".venv-client" / "bin" / "python", "-c", PY_PLAIN,
                          marker_sql(py_marker), s.PROJECT], env).stdout)
    assert_masked(r["email"] for r in out["rows"])
    env = clean_env(exports, tmp_path / "home", NODE_EXTRA_CA_CERTS=ca)
    out = json.loads(run(["node", "-e", NODE_PLAIN, marker_sql(node_marker)], env, cwd=NODE_DIR).stdout)
    assert_masked(r["email"] for r in out["rows"])
    for marker in (py_marker, node_marker):
        assert_through_gateway(tls_gw, marker)
    bad = post_token(tls_gw["url"], "qg_nope", verify=ca)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
