"""@google-cloud/bigquery (Node 8.x) through querygate.

node/flows.js runs the flows and prints one JSON object; the assertions are here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import e2e_support as s

C = s.CUSTOMERS


@pytest.fixture(scope="module")
def node_results(gateway):
    node = shutil.which("node")
    assert node, "node is not on PATH"
    assert (s.HERE / "node" / "node_modules" / "@google-cloud" / "bigquery").is_dir(), \
        "node_modules missing: run tests/e2e/setup.sh"
    env = dict(os.environ, E2E_ENDPOINT=gateway.url, E2E_KEY=gateway.key, E2E_PROJECT=s.PROJECT,
               E2E_DATASET=s.DATASET, E2E_TABLE=s.TABLE, E2E_GATEWAY="0" if s.DIRECT else "1")
    cp = subprocess.run([node, str(s.HERE / "node" / "flows.js")], capture_output=True, text=True,
                        env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, s.describe(cp)
    lines = [line for line in cp.stdout.splitlines() if line.startswith("{")]
    assert lines, s.describe(cp)
    return json.loads(lines[-1])


def _ok(results, flow):
    r = results[flow]
    assert r["ok"], f"node flow {flow} failed: {r.get('error')}"
    return r


def test_node_query_rows(node_results, audit_ledger):
    r = _ok(node_results, "query")
    assert r["rows"] == [{"id": c["id"], "name": c["name"], "email": c["email"]} for c in C[:4]]
    audit_ledger.append({"kind": "query", "flow": "node query()", "method": "jobs.query",
                         "statement": r["sql"], "job_id": r.get("jobId"), "rows": 4})


def test_node_query_with_params(node_results, audit_ledger):
    r = _ok(node_results, "query_params")
    assert r["rows"] == [{"id": c["id"], "score": c["score"]} for c in C[4:6]]
    audit_ledger.append({"kind": "query", "flow": "node query(params)", "method": "jobs.query",
                         "statement": r["sql"], "job_id": r.get("jobId"), "rows": 2})


def test_node_get_rows(node_results, audit_ledger):
    r = _ok(node_results, "getRows")
    assert [row["id"] for row in r["rows"]] == list(range(1, 8))
    assert [row["email"] for row in r["rows"]] == [c["email"] for c in C[:7]]
    assert r["rows"][0]["created"].startswith("2024-01-01T08:30:00")
    audit_ledger.append({"kind": "tabledata", "flow": "node getRows(maxResults=7)", "pages": [7]})


@pytest.mark.gateway_only
def test_node_insert_is_denied(node_results, emu_client, audit_ledger):
    r = node_results["insert_denied"]
    assert not r["ok"], "insert through the gateway succeeded"
    assert r["error"]["code"] == 403, r["error"]
    assert r["error"]["reason"] == "accessDenied", r["error"]
    assert r["ms"] < 5000
    ids = [row["id"] for row in emu_client.list_rows(s.TABLE_ID)]
    assert 77 not in ids
    audit_ledger.append({"kind": "deny", "flow": "node table.insert", "method": "tabledata.insertAll"})


@pytest.mark.gateway_only
def test_node_wrong_key_is_rejected(node_results):
    r = node_results["wrong_key"]
    assert not r["ok"], "a wrong key got rows"
    assert r["error"]["code"] == 403, r["error"]
    assert "not a querygate API key" in r["error"]["message"], r["error"]
    assert r["ms"] < 5000
