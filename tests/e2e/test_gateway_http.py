"""Raw HTTP against querygate: compression and the shape of its refusals.

Uses `requests` directly, the way a non-Google client (or curl) would.
"""
from __future__ import annotations

import gzip
import json

import pytest
import requests

import e2e_support as s

pytestmark = pytest.mark.gateway_only

QUERIES = f"/bigquery/v2/projects/{s.PROJECT}/queries"


def _auth(gateway):
    return {"Authorization": f"Bearer {gateway.key}"}


def _assert_envelope(resp, code):
    assert resp.status_code == code, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == code
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["errors"], list) and err["errors"] and err["errors"][0].get("reason")
    assert isinstance(err.get("status"), str) and err["status"]
    return err


def test_gzip_request_body_is_accepted(gateway, audit_ledger):
    sql = f"SELECT id, name FROM {s.TABLE_SQL} WHERE id > 9 ORDER BY id"
    body = gzip.compress(json.dumps({"query": sql, "useLegacySql": False}).encode())
    r = requests.post(gateway.url + QUERIES, data=body, timeout=30, headers={
        **_auth(gateway), "Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    assert doc["jobComplete"] is True
    assert [[cell["v"] for cell in row["f"]] for row in doc["rows"]] == [
        [str(c["id"]), c["name"]] for c in s.CUSTOMERS[9:]]
    audit_ledger.append({"kind": "query", "flow": "raw gzip POST /queries", "method": "jobs.query",
                         "statement": sql, "job_id": doc.get("jobReference", {}).get("jobId"), "rows": 3})


def test_gzip_response_when_accepted(gateway, audit_ledger):
    sql = f"SELECT id, name, email, score, created FROM {s.TABLE_SQL} WHERE id > 0 ORDER BY id"
    r = requests.post(gateway.url + QUERIES, json={"query": sql, "useLegacySql": False}, timeout=30,
                      stream=True, headers={**_auth(gateway), "Accept-Encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers.get("Content-Encoding") == "gzip", dict(r.headers)
    raw = r.raw.read(decode_content=False)
    assert raw[:2] == b"\x1f\x8b", "body is not gzip"
    doc = json.loads(gzip.decompress(raw))
    assert [row["f"][2]["v"] for row in doc["rows"]] == [c["email"] for c in s.CUSTOMERS]
    audit_ledger.append({"kind": "query", "flow": "raw POST /queries, Accept-Encoding: gzip",
                         "method": "jobs.query", "statement": sql,
                         "job_id": doc.get("jobReference", {}).get("jobId"), "rows": 12})


def test_identity_response_without_accept_encoding(gateway):
    r = requests.get(gateway.url + f"/bigquery/v2/projects/{s.PROJECT}/datasets", timeout=30,
                     stream=True, headers={**_auth(gateway), "Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers.get("Content-Encoding") in (None, "identity")
    assert "shop" in [d["datasetReference"]["datasetId"] for d in json.loads(r.raw.read())["datasets"]]


def test_missing_authorization_is_403_envelope(gateway):
    # 403 rather than 401, so Google's auth libraries do not swallow the message in a refresh attempt.
    r = requests.post(gateway.url + QUERIES, json={"query": "SELECT 1", "useLegacySql": False}, timeout=30)
    _assert_envelope(r, 403)
    assert "API key" in r.json()["error"]["message"]


def test_wrong_key_is_403_envelope(gateway):
    r = requests.post(gateway.url + QUERIES, json={"query": "SELECT 1", "useLegacySql": False}, timeout=30,
                      headers={"Authorization": "Bearer qg_e2e_wrong"})
    _assert_envelope(r, 403)


def test_key_never_echoed(gateway):
    r = requests.post(gateway.url + QUERIES, json={"query": "SELECT 1", "useLegacySql": False}, timeout=30,
                      headers={"Authorization": "Bearer qg_e2e_wrong_secret_value"})
    assert "qg_e2e_wrong_secret_value" not in r.text
