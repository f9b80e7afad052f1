"""querygate's own MCP front, through the official MCP Python SDK client (and the TypeScript
SDK's) over Streamable HTTP (the first part of the MCP issue): the tools are listed; catalog tools and execute_sql
answer from the embedded engine with masked columns masked for the agent and clear for the
privacy group; a write is a tool error with the rule's message; an unknown tool and bad
arguments are tool errors; a request without a credential gets 401 with the
protected-resource metadata; every call is in the audit log under its tool's name.

Starts `querygate serve` with a `local` source over small CSV files it writes and
`server.mcp_listen`; the SDK runs in its own venv (.venv-mcp) and is driven as a script.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess

import pytest
import requests

import e2e_support as s

pytestmark = pytest.mark.gateway_only

NODE_DRIVER = s.HERE / "mcp-node" / "drive.mjs"


if not s.has_local():
    pytest.skip("querygate was built without the embedded engine", allow_module_level=True)

PROJECT = "mcp-local"

CONFIG = """
[server]
bigquery_listen = "127.0.0.1:{port}"
mcp_listen = "127.0.0.1:{mcp_port}"
admin_listen = "127.0.0.1:{admin_port}"

[store]
path = "querygate.db"

{keys}
[[sources]]
name = "files"
kind = "local"
project = "{project}"
tables = {{ "shop.customers" = "customers.csv", "shop.orders" = "orders.csv", "shop.payroll" = "payroll.csv", "hr.people" = "people.csv" }}

[[classify]]
tag = "email"
columns = ["{project}.shop.customers.email"]

[[mask]]
tag = "email"
strategy = "email_domain"
unmasked_for = ["group:privacy"]

[[rule]]
name = "no hr for agents"
who = ["group:agents"]
tables = ["*.hr.*"]
action = "deny"
message = "agents do not read HR data"

[[rule]]
name = "no payroll for agents"
who = ["group:agents"]
tables = ["*.shop.payroll"]
action = "deny"
message = "payroll is for people, not agents"

[[rule]]
name = "the files are read-only"
statements = ["insert", "update", "delete", "merge", "create", "drop"]
action = "deny"
message = "the shop data is read-only through querygate"

[[rule]]
name = "orders need an approver"
who = ["group:agents"]
tables = ["*.shop.orders"]
statements = ["select"]
action = "approve"
approvers = ["group:approvers"]
message = "reads of orders need an approver"

[[rule]]
name = "read"
who = ["group:agents", "group:privacy"]
statements = ["select"]
action = "allow"
"""

@pytest.fixture(scope="module")
def gateway(e2e_tmp):
    work = e2e_tmp / "mcp-local"
    work.mkdir(parents=True)
    (work / "customers.csv").write_text(
        "id,name,email\n"
        "1,Ana Lima,ana@example.com\n"
        "2,Bo Chen,bo@corp.example\n")
    (work / "orders.csv").write_text("order_id,customer_id,amount\n1,1,10.5\n")
    (work / "payroll.csv").write_text("employee,salary\nAna,100\n")
    (work / "people.csv").write_text("id,name\n1,Ana\n")
    keys = {"agent": "qg_mcp_agent_" + secrets.token_urlsafe(16),
            "privacy": "qg_mcp_privacy_" + secrets.token_urlsafe(16),
            "approver": "qg_mcp_approver_" + secrets.token_urlsafe(16)}
    key_toml = (s.api_key_toml("agent:mcp-test", ["agents"], s.sha256_hex(keys["agent"]))
                + s.api_key_toml("human:privacy", ["privacy"], s.sha256_hex(keys["privacy"]))
                + s.api_key_toml("human:approver", ["approvers"], s.sha256_hex(keys["approver"])))
    port, mcp_port, admin_port = s.free_port(), s.free_port(), s.free_port()
    config = work / "querygate.toml"
    config.write_text(CONFIG.format(port=port, mcp_port=mcp_port, admin_port=admin_port, keys=key_toml,
                                    project=PROJECT))
    env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1")
    server = s.Server(name="querygate-mcp", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=env, cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield {"url": f"http://127.0.0.1:{mcp_port}/mcp", "keys": keys, "config": config, "server": server,
               "admin": f"http://127.0.0.1:{admin_port}"}
    finally:
        server.stop()


def drive(gateway, who: str, calls: list) -> dict:
    return s.mcp_drive(gateway, who, calls)


def test_the_tools_answer_from_the_source_masked_for_the_agent(gateway):
    out = drive(gateway, "agent", [
        ["list_dataset_ids", {}],
        ["list_table_ids", {"dataset_id": "shop"}],
        ["get_table_info", {"dataset_id": "shop", "table_id": "customers"}],
        ["execute_sql", {"sql": "SELECT id, email FROM shop.customers ORDER BY id"}],
        ["execute_sql", {"sql": "DELETE FROM shop.orders WHERE TRUE"}],
        ["drop_all_tables", {}],
        ["execute_sql", {"sql": 42}],
    ])
    assert out["tools"] == ["list_dataset_ids", "list_table_ids", "get_dataset_info", "get_table_info",
                            "execute_sql", "get_query_results", "get_job", "cancel_job"]
    datasets, tables, table, rows, write, unknown, bad = out["results"]
    # The catalog shows the agent only what its rules let it read.
    assert datasets["structured"] == {"dataset_ids": ["shop"]}, datasets
    assert sorted(tables["structured"]["table_ids"]) == ["customers", "orders"], tables
    assert [c["name"] for c in table["structured"]["schema"]] == ["id", "name", "email"], table
    # ... and which columns are masked for it, and how.
    assert [(c["name"], c["masked"], c.get("mask")) for c in table["structured"]["schema"]] == [
        ("id", False, None), ("name", False, None), ("email", True, "email_domain")], table
    assert "email STRING (masked for you: email_domain)" in table["texts"][0], table
    assert not rows["is_error"], rows
    assert rows["structured"]["rows"] == [{"id": 1, "email": "***@example.com"},
                                          {"id": 2, "email": "***@corp.example"}], rows
    assert "***@example.com" in rows["texts"][0]
    assert write["is_error"] and "read-only through querygate" in write["texts"][0], write
    assert unknown["is_error"] and "Unknown tool `drop_all_tables`" in unknown["texts"][0], unknown
    assert bad["is_error"] and "Invalid arguments for execute_sql" in bad["texts"][0], bad


def test_the_typescript_sdk_client_gets_the_same_answers(gateway):
    cp = subprocess.run(["node", str(NODE_DRIVER), gateway["url"], gateway["keys"]["agent"], json.dumps([
        ["list_table_ids", {"dataset_id": "shop"}],
        ["execute_sql", {"sql": "SELECT id, email FROM shop.customers ORDER BY id"}],
        ["execute_sql", {"sql": "DELETE FROM shop.orders WHERE TRUE"}],
    ])], capture_output=True, text=True, timeout=120, cwd=NODE_DRIVER.parent)
    assert cp.returncode == 0, f"node driver failed:\n{cp.stderr[-3000:]}"
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert "execute_sql" in out["tools"]
    tables, rows, write = out["results"]
    assert sorted(tables["structured"]["table_ids"]) == ["customers", "orders"], tables
    assert rows["structured"]["rows"] == [{"id": 1, "email": "***@example.com"},
                                          {"id": 2, "email": "***@corp.example"}], rows
    assert write["is_error"] and "read-only through querygate" in write["texts"][0], write


def test_the_privacy_group_reads_in_clear(gateway):
    out = drive(gateway, "privacy", [["execute_sql", {"sql": "SELECT email FROM shop.customers ORDER BY id"}],
                                     ["get_table_info", {"dataset_id": "shop", "table_id": "customers"}],
                                     ["list_dataset_ids", {}],
                                     ["list_table_ids", {"dataset_id": "shop"}]])
    rows, table, datasets, tables = out["results"]
    assert [r["email"] for r in rows["structured"]["rows"]] == ["ana@example.com", "bo@corp.example"], rows
    assert not any(c["masked"] for c in table["structured"]["schema"]), table
    # The rules that hide HR and payroll from agents do not hide them from people.
    assert sorted(datasets["structured"]["dataset_ids"]) == ["hr", "shop"], datasets
    assert sorted(tables["structured"]["table_ids"]) == ["customers", "orders", "payroll"], tables


def test_what_the_rules_hide_cannot_be_described_or_read(gateway):
    out = drive(gateway, "agent", [
        ["get_table_info", {"dataset_id": "shop", "table_id": "payroll"}],
        ["get_dataset_info", {"dataset_id": "hr"}],
        ["list_table_ids", {"dataset_id": "hr"}],
        ["get_table_info", {"dataset_id": "hr", "table_id": "people"}],
        ["execute_sql", {"sql": "SELECT * FROM shop.payroll"}],
        # The upstream describes the table behind a decorator: so does the rule.
        ["get_table_info", {"dataset_id": "shop", "table_id": "payroll@0"}],
        ["get_table_info", {"dataset_id": "shop", "table_id": "payroll$20260101"}],
    ])
    payroll, hr, hr_tables, people, read, snapshot, partition = out["results"]
    for r, says in [(payroll, "payroll is for people"), (hr, "agents do not read HR data"),
                    (hr_tables, "agents do not read HR data"), (people, "agents do not read HR data"),
                    (read, "payroll is for people"), (snapshot, "payroll is for people"),
                    (partition, "payroll is for people")]:
        assert r["is_error"] and says in r["texts"][0], r


def test_a_dry_run_says_what_a_real_run_would_get(gateway):
    out = drive(gateway, "agent", [
        ["execute_sql", {"sql": "SELECT order_id FROM shop.orders", "dry_run": True}],
        ["execute_sql", {"sql": "SELECT id FROM shop.customers", "dry_run": True}],
        ["execute_sql", {"sql": "DELETE FROM shop.orders WHERE TRUE", "dry_run": True}],
    ])
    approve, allow, deny = out["results"]
    assert not approve["is_error"], approve
    assert approve["structured"]["dry_run"] is True
    assert approve["structured"]["decision"] == {"verdict": "approve", "rule": "orders need an approver",
                                                 "approvers": ["group:approvers"]}, approve
    assert "waits for approval by group:approvers" in approve["texts"][0]
    assert allow["structured"]["decision"] == {"verdict": "allow", "rule": "read"}, allow
    assert "bytes_processed" in allow["structured"]
    assert deny["is_error"], deny
    assert deny["structured"]["decision"] == {"verdict": "deny", "rule": "the files are read-only"}, deny
    assert "read-only through querygate" in deny["texts"][0]
    # Nothing waits and nothing was held: no ticket for the dry run.
    tickets = s.run_cli(s.default_gateway_bin(), "approvals", "list", "--config", str(gateway["config"]), "--json")
    assert "SELECT order_id FROM shop.orders" not in tickets.stdout


def test_huge_arguments_and_bodies_are_refused_clearly(gateway):
    headers = {"Authorization": f"Bearer {gateway['keys']['agent']}",
               "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    # A body over the limit: 413 with a JSON-RPC error, before anything is parsed.
    huge = "x" * (11 * 1024 * 1024)
    r = requests.post(gateway["url"], headers=headers, timeout=60, data=json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
         "params": {"name": "execute_sql", "arguments": {"sql": huge}}}))
    assert r.status_code == 413 and "larger than querygate accepts" in r.json()["error"]["message"], r.text[:300]
    # A statement within the body limit but over the query limit: a tool error, audited.
    out = drive(gateway, "agent", [["execute_sql", {"sql": "SELECT '" + "y" * (1100 * 1024) + "'"}],
                                   ["list_table_ids", {"dataset_id": "d" * 5000}]])
    statement, name = out["results"]
    assert statement["is_error"] and "statement" in statement["texts"][0].lower(), statement["texts"][0][:300]
    assert name["is_error"], name
    assert gateway["server"].alive()


def test_a_flood_of_calls_is_answered_and_audited(gateway):
    calls = [["execute_sql", {"sql": f"SELECT {i} AS n"}] for i in range(150)]
    calls += [["no_such_tool", {}]] * 25 + [["execute_sql", {"sql": ["not", "text"]}]] * 25
    out = drive(gateway, "agent", calls)
    results = out["results"]
    assert [r["structured"]["rows"] for r in results[:150]] == [[{"n": i}] for i in range(150)]
    assert all(r["is_error"] for r in results[150:])
    # Malformed JSON-RPC between the calls gets a JSON-RPC error, not a hang.
    headers = {"Authorization": f"Bearer {gateway['keys']['agent']}",
               "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    bad = requests.post(gateway["url"], headers=headers, data="{not json", timeout=10)
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["code"] == -32700 and "not JSON" in bad.json()["error"]["message"], bad.text
    cp = s.run_cli(s.default_gateway_bin(), "audit", "tail", "--config", str(gateway["config"]),
                   "--json", "-n", "2000")
    records = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    answered = {r["statement"] for r in records if r["method"] == "execute_sql" and r.get("phase") == "completed"
                and (r.get("statement") or "").startswith("SELECT ") and r["statement"].endswith(" AS n")}
    assert len(answered) >= 150, len(answered)
    assert sum(1 for r in records if r["method"] == "no_such_tool") >= 25
    assert any(r["method"] == "mcp" and "not JSON" in json.dumps(r) for r in records)
    assert gateway["server"].alive()


def test_no_credential_gets_401_with_where_to_get_a_token(gateway):
    r = requests.post(gateway["url"], json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                      headers={"Accept": "application/json, text/event-stream"}, timeout=10)
    assert r.status_code == 401
    assert 'resource_metadata="' in r.headers["WWW-Authenticate"]
    meta = requests.get(gateway["url"].replace("/mcp", "/.well-known/oauth-protected-resource/mcp"), timeout=10)
    assert meta.status_code == 200 and meta.json()["resource"].endswith("/mcp")


def test_every_call_is_audited_under_its_tool(gateway):
    drive(gateway, "agent", [["execute_sql", {"sql": "SELECT name FROM shop.customers"}],
                             ["execute_sql", {"sql": "DELETE FROM shop.orders WHERE TRUE"}],
                             ["list_dataset_ids", {}]])
    cp = s.run_cli(s.default_gateway_bin(), "audit", "tail", "--config", str(gateway["config"]),
                   "--json", "-n", "200")
    assert cp.returncode == 0, s.describe(cp)
    records = [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]
    methods = {(r["method"], r["decision"]) for r in records}
    for expected in [("execute_sql", "allow"), ("execute_sql", "deny"), ("list_dataset_ids", "allow")]:
        assert expected in methods, methods
    assert any(r["method"] == "execute_sql" and r["identity"] == "agent:mcp-test"
               and r.get("statement") == "DELETE FROM shop.orders WHERE TRUE" for r in records), records
    verify = s.run_cli(s.default_gateway_bin(), "audit", "verify", "--config", str(gateway["config"]))
    assert verify.returncode == 0, s.describe(verify)


def test_a_call_an_approve_rule_catches_waits_for_a_person_then_returns_rows(gateway):
    sql = "SELECT order_id, amount FROM shop.orders"
    (held,) = drive(gateway, "agent", [["execute_sql", {"sql": sql}]])["results"]
    assert not held["is_error"], held
    pending = held["structured"]
    assert pending["state"] == "PENDING" and pending["approvers"] == ["group:approvers"], pending
    assert "get_query_results" in pending["message"] and "reads of orders need an approver" in pending["message"]
    # Before a decision, get_query_results waits (briefly here) and answers still pending.
    (waiting,) = drive(gateway, "agent", [["get_query_results", {"job_id": pending["job_id"], "timeout_ms": 500}]])["results"]
    assert waiting["structured"]["state"] == "PENDING", waiting
    env = dict(os.environ, QUERYGATE_TOKEN=gateway["keys"]["approver"], NO_COLOR="1")
    cp = subprocess.run([str(s.default_gateway_bin()), "approvals", "approve", pending["ticket"],
                         "--reason", "ok for the test", "--server", gateway["admin"]],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 0, s.describe(cp)
    (rows,) = drive(gateway, "agent", [["get_query_results", {"job_id": pending["job_id"], "timeout_ms": 5000}]])["results"]
    assert not rows["is_error"], rows
    assert rows["structured"]["rows"] == [{"order_id": 1, "amount": 10.5}], rows


EMU_MASKING = """
[[classify]]
tag = "email"
columns = ["{project}.shop.customers.email"]

[[mask]]
tag = "email"
strategy = "email_domain"
"""


@pytest.fixture(scope="module")
def emu_gateway(seeded, emulator, e2e_tmp):
    """A gateway whose source is the BigQuery emulator (the REST front's e2e policy, email
    masked for the agent), serving MCP."""
    work = e2e_tmp / "mcp-emulator"
    work.mkdir(parents=True)
    key = "qg_mcp_emu_" + secrets.token_urlsafe(16)
    port, mcp_port = s.free_port(), s.free_port()
    config = work / "querygate.toml"
    config.write_text(
        f'[server]\nbigquery_listen = "127.0.0.1:{port}"\nmcp_listen = "127.0.0.1:{mcp_port}"\n\n'
        f'[store]\npath = "{work / "querygate.db"}"\n\n'
        + s.api_key_toml(s.IDENTITY, s.GROUPS, s.sha256_hex(key))
        + s.bigquery_source_toml(emulator.url)
        + EMU_MASKING.format(project=s.PROJECT)
        + s.POLICY)
    server = s.Server(name="querygate-mcp-emulator",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=dict(os.environ, NO_COLOR="1"), cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield {"url": f"http://127.0.0.1:{mcp_port}/mcp", "keys": {"agent": key}, "server": server}
    finally:
        server.stop()


def test_every_tool_works_against_the_bigquery_emulator(emu_gateway):
    out = drive(emu_gateway, "agent", [
        ["list_dataset_ids", {}],
        ["list_table_ids", {"dataset_id": "shop"}],
        ["get_dataset_info", {"dataset_id": "shop"}],
        ["get_table_info", {"dataset_id": "shop", "table_id": "customers"}],
        ["execute_sql", {"sql": "SELECT id, email FROM shop.customers ORDER BY id LIMIT 3", "max_rows": 2}],
        ["execute_sql", {"sql": "DELETE FROM shop.customers WHERE TRUE"}],
    ])
    datasets, tables, dataset, table, rows, write = out["results"]
    assert "shop" in datasets["structured"]["dataset_ids"], datasets
    assert "customers" in tables["structured"]["table_ids"], tables
    assert dataset["structured"]["dataset_id"].endswith("shop"), dataset
    assert {c["name"] for c in table["structured"]["schema"]} >= {"id", "name", "email"}, table
    assert not rows["is_error"], rows
    first = rows["structured"]
    assert [r["id"] for r in first["rows"]] == [1, 2], first
    assert all(r["email"].startswith("***@") for r in first["rows"]), first
    assert write["is_error"] and write["texts"][0].startswith("Access Denied"), write
    # The next page, and the job, through the jobs tools.
    job = first["job_id"]
    more = drive(emu_gateway, "agent", [
        ["get_query_results", {"job_id": job, "page_token": first["page_token"], "max_rows": 2}],
        ["get_job", {"job_id": job}],
        ["cancel_job", {"job_id": job}],
        ["get_job", {"job_id": "someone-elses-job"}],
    ])["results"]
    page, state, cancelled, other = more
    assert [r["id"] for r in page["structured"]["rows"]] == [3], page
    assert page["structured"]["rows"][0]["email"].startswith("***@"), page
    assert state["structured"]["state"] == "DONE", state
    assert not cancelled["is_error"], cancelled
    assert other["is_error"] and "Not found" in other["texts"][0], other


@pytest.fixture(scope="module")
def vault_gateway(emulator, e2e_tmp, emu_client, seeded):
    """The masking suite's tables and masks (test_masking.py), behind a gateway serving MCP."""
    import test_masking as m
    from google.api_core.exceptions import NotFound
    try:  # the masking suite's module may have made them already (it runs first)
        emu_client.get_table(f"{s.PROJECT}.vault.people")
    except NotFound:
        m.vault.__wrapped__(emu_client, seeded)
    work = e2e_tmp / "mcp-masking"
    work.mkdir(parents=True)
    key = "qg_mcp_mask_" + secrets.token_urlsafe(16)
    port, mcp_port = s.free_port(), s.free_port()
    config = s.write_gateway_config(work / "querygate.toml", listen_port=port, store=work / "querygate.db",
                                    key_sha256=s.sha256_hex(key), emulator_url=emulator.url)
    text = config.read_text().replace("[server]\n", f'[server]\nmcp_listen = "127.0.0.1:{mcp_port}"\n', 1)
    config.write_text(text + m.MASKING)
    server = s.Server(name="querygate-mcp-masking",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=None, cwd=work).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        mask_key = (work / "querygate.db.maskkey").read_text().strip()
        yield {"url": f"http://127.0.0.1:{mcp_port}/mcp", "keys": {"agent": key}, "server": server,
               "mask_key": mask_key}
    finally:
        server.stop()


def test_the_masking_bypasses_sent_as_execute_sql_leak_nothing(vault_gateway):
    import test_masking as m
    out = drive(vault_gateway, "agent", [["execute_sql", {"sql": sql}] for _, sql in m.BYPASSES])
    assert len(out["results"]) == len(m.BYPASSES)
    answered = 0
    for (name, _), result in zip(m.BYPASSES, out["results"]):
        seen = json.dumps(result)
        leaked = sorted(v for v in m.SECRETS if v in seen)
        assert not leaked, f"{name}: {leaked} in {seen[:2000]}"
        assert vault_gateway["mask_key"] not in seen, name
        answered += not result["is_error"]
    # Most of them run (masked), the rest are refused: none is an empty success by accident.
    assert answered >= len(m.BYPASSES) // 3, answered


def test_names_and_ids_the_upstream_could_read_another_way_are_refused(vault_gateway):
    """Ids become path segments of the upstream call: separators, encodings and another
    project must not reach a different table, job or source than the one decided on."""
    import test_masking as m
    out = drive(vault_gateway, "agent", [
        ["get_table_info", {"dataset_id": "shop/../vault", "table_id": "people"}],
        ["get_table_info", {"dataset_id": "vault.people", "table_id": "x"}],
        ["list_table_ids", {"dataset_id": "vault%2Fpeople"}],
        ["get_query_results", {"job_id": "../queries/x"}],
        ["get_job", {"job_id": "x%2F..%2Fy"}],
        ["execute_sql", {"sql": "SELECT email FROM vault.people", "project": "another-project"}],
        ["execute_sql", {"sql": "SELECT email FROM VAULT.People"}],
    ])["results"]
    sep, dotted, encoded, job_path, job_encoded, other_project, miscased = out
    for name, r in [("separator", sep), ("dotted", dotted), ("job path", job_path),
                    ("encoded job", job_encoded), ("other project", other_project)]:
        assert r["is_error"], f"{name}: {r}"
    assert "Not found" in other_project["texts"][0], other_project
    # An encoded separator is a dataset name of its own: nothing but "not found" or no tables.
    assert encoded["is_error"] or encoded["structured"] == {"table_ids": []}, encoded
    # A miscased name reads the same masked table, masked.
    seen = json.dumps(miscased)
    assert not [v for v in m.SECRETS if v in seen], seen
