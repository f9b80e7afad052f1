"""google-cloud-bigquery (Python) through querygate: the flows a user runs.

Every test checks what the user would look at (row values, counts, exception
classes and messages, how long a failure takes) and records what it expects
querygate to have audited in `audit_ledger` (checked by test_audit_cli.py).
"""
from __future__ import annotations

import time
import uuid

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import e2e_support as s
from e2e_support import make_client

T = s.TABLE_SQL
C = s.CUSTOMERS
FAST = 5.0  # seconds: a refused request must fail at once, not after a retry loop
# Client defaults retry 5xx/429 for up to 600 s. A 403 is never retried, so bounding
# the deadline changes nothing for a correct gateway; for a wrong one (5xx) the test
# fails in ~10 s with "took 10.0s" instead of hanging.
BOUNDED = bigquery.DEFAULT_RETRY.with_deadline(10)


def _expect_query(ledger, flow, method, sql, job_id, rows):
    ledger.append({"kind": "query", "flow": flow, "method": method, "statement": sql,
                   "job_id": job_id, "rows": rows})


# ---------------------------------------------------------------- reading data

def test_query_result_rows(bq, audit_ledger):
    sql = f"SELECT id, name, email FROM {T} WHERE id <= 3 ORDER BY id"
    job = bq.query(sql)
    rows = list(job.result())
    assert [(r["id"], r["name"], r["email"]) for r in rows] == [
        (c["id"], c["name"], c["email"]) for c in C[:3]]
    assert list(rows[0].keys()) == ["id", "name", "email"]
    _expect_query(audit_ledger, "query().result()", "jobs.insert", sql, job.job_id, 3)


def test_query_and_wait(bq, audit_ledger):
    sql = f"SELECT id, score, created FROM {T} WHERE score > 60 ORDER BY id"
    rows = bq.query_and_wait(sql)
    got = [(r.id, r.score, r.created) for r in rows]
    want = [(c["id"], c["score"], s.created_dt(c)) for c in C if c["score"] > 60]
    assert [w[0] for w in want] == [9, 10, 11, 12]
    assert got == want
    assert rows.total_rows == 4
    _expect_query(audit_ledger, "query_and_wait", "jobs.query", sql, rows.job_id, 4)


def test_query_paging_page_size_2(bq, audit_ledger):
    sql = f"SELECT id, email FROM {T} ORDER BY id"
    job = bq.query(sql)
    it = job.result(page_size=2)
    pages = [[(r.id, r.email) for r in page] for page in it.pages]
    assert [len(p) for p in pages] == [2] * 6
    assert [row for page in pages for row in page] == [(c["id"], c["email"]) for c in C]
    assert it.total_rows == 12
    _expect_query(audit_ledger, "query().result(page_size=2)", "jobs.insert", sql, job.job_id, 12)


def test_list_rows_max_results_selected_fields(bq, audit_ledger):
    id_field = bigquery.SchemaField("id", "INT64", mode="REQUIRED")
    email_field = bigquery.SchemaField("email", "STRING")
    rows = list(bq.list_rows(s.TABLE_ID, max_results=5, selected_fields=[id_field, email_field]))
    assert [list(r.keys()) for r in rows] == [["id", "email"]] * 5
    assert [(r.id, r.email) for r in rows] == [(c["id"], c["email"]) for c in C[:5]]
    audit_ledger.append({"kind": "tabledata", "flow": "list_rows(max_results=5, selected_fields)",
                         "pages": [5]})


def test_list_rows_page_size(bq, audit_ledger):
    it = bq.list_rows(s.TABLE_ID, page_size=4)  # string id: the client calls tables.get for the schema
    pages = [list(page) for page in it.pages]
    assert [len(p) for p in pages] == [4, 4, 4]
    got = [dict(r.items()) for p in pages for r in p]
    assert got == [{**c, "created": s.created_dt(c)} for c in C]
    audit_ledger.append({"kind": "tabledata", "flow": "list_rows(page_size=4)", "pages": [4, 4, 4]})
    audit_ledger.append({"kind": "call", "flow": "list_rows(page_size=4)", "method": "tables.get"})


def test_to_dataframe_rest(bq, audit_ledger):
    import pandas as pd

    sql = f"SELECT id, name, email, score, created FROM {T} ORDER BY id"
    job = bq.query(sql)
    df = job.to_dataframe(create_bqstorage_client=False)
    assert df.shape == (12, 5)
    assert list(df.columns) == ["id", "name", "email", "score", "created"]
    assert df["id"].tolist() == list(range(1, 13))
    assert df["email"].tolist() == [c["email"] for c in C]
    assert df["score"].tolist() == pytest.approx([c["score"] for c in C])
    assert str(df["created"].dt.tz) == "UTC"
    assert df.loc[0, "created"] == pd.Timestamp("2024-01-01T08:30:00Z")
    assert df.loc[11, "name"] == "John Backus"
    _expect_query(audit_ledger, "to_dataframe", "jobs.insert", sql, job.job_id, 12)


def test_dry_run(bq, audit_ledger):
    sql = f"SELECT email, score FROM {T} WHERE id > 6"
    job = bq.query(sql, job_config=bigquery.QueryJobConfig(dry_run=True, use_query_cache=False))
    assert job.dry_run is True
    assert job.state == "DONE"
    assert job.error_result is None
    assert [f.name for f in job.schema] == ["email", "score"]
    assert list(job.result()) == []
    _expect_query(audit_ledger, "dry_run", "jobs.insert", sql, job.job_id, 0)


def test_parameterized_query(bq, audit_ledger):
    sql = f"SELECT id, name FROM {T} WHERE id >= @min_id ORDER BY id"
    cfg = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("min_id", "INT64", 10)])
    job = bq.query(sql, job_config=cfg)
    assert [(r.id, r.name) for r in job.result()] == [(c["id"], c["name"]) for c in C[9:]]
    _expect_query(audit_ledger, "parameterized", "jobs.insert", sql, job.job_id, 3)


def test_bad_query_raises_bad_request(bq, audit_ledger):
    sql = f"SELECT nosuchcol FROM {T}"
    job_id = f"e2e-bad-query-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with pytest.raises(gexc.BadRequest) as ei:
        bq.query(sql, job_id=job_id, job_retry=None).result()
    assert time.monotonic() - t0 < FAST
    msg = str(ei.value)
    # the upstream's own wording (bqemulator passes DuckDB's binder error through)
    assert "nosuchcol" in msg and "not found" in msg, msg
    assert ei.value.errors and ei.value.errors[0].get("reason") == "invalidQuery", ei.value.errors
    # The gateway's dry run (for the "large scans" rule) meets the upstream's error first:
    # the query is refused with the upstream's own message (400) and never runs.
    audit_ledger.append({"kind": "deny", "flow": "bad query", "method": "jobs.insert",
                         "job_id": job_id, "status": 400})


def test_list_datasets_and_get_table_schema(bq, audit_ledger):
    assert "shop" in [d.dataset_id for d in bq.list_datasets()]
    table = bq.get_table(s.TABLE_ID)
    got = [(f.name, f.field_type, f.mode) for f in table.schema]
    norm = {"INTEGER": "INT64", "FLOAT": "FLOAT64"}
    assert [(n, norm.get(t, t), m) for n, t, m in got] == [
        ("id", "INT64", "REQUIRED"), ("name", "STRING", "NULLABLE"), ("email", "STRING", "NULLABLE"),
        ("score", "FLOAT64", "NULLABLE"), ("created", "TIMESTAMP", "NULLABLE")]
    assert table.num_rows == 12
    audit_ledger.append({"kind": "call", "flow": "list_datasets", "method": "datasets.list"})
    audit_ledger.append({"kind": "call", "flow": "get_table", "method": "tables.get"})


def test_client_chosen_job_id_is_kept(bq, audit_ledger):
    sql = f"SELECT name FROM {T} WHERE id = 7"
    job = bq.query(sql, job_id="my-job-123", job_retry=None)
    assert job.job_id == "my-job-123"
    assert [r.name for r in job.result()] == ["Margaret Hamilton"]
    again = bq.get_job("my-job-123")
    assert again.job_id == "my-job-123"
    assert again.job_type == "query"
    assert again.state == "DONE"
    assert again.query == sql
    _expect_query(audit_ledger, "query(job_id=my-job-123)", "jobs.insert", sql, "my-job-123", 1)
    audit_ledger.append({"kind": "call", "flow": "get_job(my-job-123)", "method": "jobs.get",
                         "job_id": "my-job-123"})


# ---------------------------------------------------------------- refused writes

def _assert_forbidden_fast(fn):
    t0 = time.monotonic()
    with pytest.raises(gexc.Forbidden) as ei:
        fn()
    elapsed = time.monotonic() - t0
    assert elapsed < FAST, f"took {elapsed:.1f}s: a denial must not be retried"
    assert ei.value.code == 403
    assert ei.value.errors and ei.value.errors[0].get("reason") == "accessDenied", ei.value.errors
    return ei.value


def _emu_ids(emu_client):
    return [r["id"] for r in emu_client.list_rows(s.TABLE_ID, selected_fields=[
        bigquery.SchemaField("id", "INT64")])]


@pytest.mark.gateway_only
def test_insert_rows_json_forbidden(bq, emu_client, audit_ledger):
    _assert_forbidden_fast(lambda: bq.insert_rows_json(
        s.TABLE_ID, [{"id": 99, "name": "Mallory", "email": "mallory@example.com"}], retry=BOUNDED))
    assert _emu_ids(emu_client) == list(range(1, 13)), "the denied row reached the upstream"
    audit_ledger.append({"kind": "deny", "flow": "insert_rows_json", "method": "tabledata.insertAll"})


@pytest.mark.gateway_only
def test_create_dataset_forbidden(bq, emu_client, audit_ledger):
    _assert_forbidden_fast(lambda: bq.create_dataset(f"{s.PROJECT}.shop_exfil", retry=BOUNDED))
    assert "shop_exfil" not in [d.dataset_id for d in emu_client.list_datasets()]
    audit_ledger.append({"kind": "deny", "flow": "create_dataset", "method": "datasets.insert"})


@pytest.mark.gateway_only
def test_load_job_forbidden(bq, emu_client, audit_ledger):
    dest = f"{s.PROJECT}.{s.DATASET}.customers_loaded"
    cfg = bigquery.LoadJobConfig(source_format="NEWLINE_DELIMITED_JSON", autodetect=False,
                                 schema=[bigquery.SchemaField("id", "INT64")])
    _assert_forbidden_fast(lambda: bq.load_table_from_json([{"id": 1}], dest, job_config=cfg,
                                                           job_id="e2e-load-1"))
    with pytest.raises(gexc.NotFound):
        emu_client.get_table(dest)
    # Not required (yet): the client's job id sits in the multipart body of the upload.
    audit_ledger.append({"kind": "deny", "flow": "load_table_from_json",
                         "method": ["jobs.insert", "jobs.insert(upload)"]})


@pytest.mark.gateway_only
def test_extract_job_forbidden(bq, emulator, audit_ledger):
    _assert_forbidden_fast(lambda: bq.extract_table(s.TABLE_ID, "gs://e2e-bucket/customers.csv",
                                                    job_id="e2e-extract-1", retry=BOUNDED))
    gcs_root = emulator.server.log_path.parent / "gcs"
    assert list(gcs_root.rglob("*")) == [], "the extract reached the upstream"
    audit_ledger.append({"kind": "deny", "flow": "extract_table", "method": "jobs.insert",
                         "job_id": "e2e-extract-1"})


@pytest.mark.gateway_only
def test_copy_job_forbidden(bq, emu_client, audit_ledger):
    dest = f"{s.PROJECT}.{s.DATASET}.customers_copy"
    _assert_forbidden_fast(lambda: bq.copy_table(s.TABLE_ID, dest, job_id="e2e-copy-1", retry=BOUNDED))
    with pytest.raises(gexc.NotFound):
        emu_client.get_table(dest)
    audit_ledger.append({"kind": "deny", "flow": "copy_table", "method": "jobs.insert",
                         "job_id": "e2e-copy-1"})


@pytest.mark.gateway_only
def test_delete_table_forbidden(bq, emu_client, audit_ledger):
    _assert_forbidden_fast(lambda: bq.delete_table(s.TABLE_ID, retry=BOUNDED))
    assert _emu_ids(emu_client) == list(range(1, 13)), "the table was deleted upstream"
    audit_ledger.append({"kind": "deny", "flow": "delete_table", "method": ["tables.delete", "tables.write"]})


# ---------------------------------------------------------------- authentication

@pytest.mark.gateway_only
def test_missing_key_fails_at_once(gateway):
    """No Authorization header (AnonymousCredentials) -> 403 Forbidden naming the fix.

    querygate answers failed authentication with 403, not 401: on a 401, google-auth
    tries to refresh the credentials and raises its own error (InvalidOperation for
    anonymous credentials), which would hide the gateway's message from the agent.
    """
    client = make_client(gateway.url, token=None)
    t0 = time.monotonic()
    with pytest.raises(gexc.Forbidden) as ei:
        list(client.list_datasets())
    assert time.monotonic() - t0 < FAST
    assert "API key" in str(ei.value), ei.value


@pytest.mark.gateway_only
def test_wrong_key_fails_at_once(gateway):
    """A key that is not configured -> 403 Forbidden with the gateway's message, at once."""
    import requests

    status = requests.get(f"{gateway.url}/bigquery/v2/projects/{s.PROJECT}/datasets",
                          headers={"Authorization": "Bearer qg_e2e_not-a-real-key"}, timeout=10).status_code
    assert status == 403
    client = make_client(gateway.url, token="qg_e2e_not-a-real-key")
    for op in (lambda: list(client.list_datasets()),
               lambda: list(client.query_and_wait(f"SELECT id FROM {T}"))):
        t0 = time.monotonic()
        with pytest.raises(gexc.Forbidden) as ei:
            op()
        assert time.monotonic() - t0 < FAST
        assert "not a querygate API key" in str(ei.value), ei.value


@pytest.mark.gateway_only
@pytest.mark.parametrize("sql, via", [
    (f"DELETE FROM {T} WHERE id = 12", "query().result()"),
    (f"SELECT 1; DROP TABLE {T}", "query_and_wait"),
])
def test_policy_denial_names_the_rule(bq, emu_client, audit_ledger, sql, via):
    """A write is refused by the rule "agents never write", and the client shows its message."""
    t0 = time.monotonic()
    with pytest.raises(gexc.Forbidden) as ei:
        if via == "query_and_wait":
            bq.query_and_wait(sql, retry=BOUNDED)
        else:
            bq.query(sql, retry=BOUNDED).result()
    assert time.monotonic() - t0 < FAST
    text = str(ei.value)
    assert 'rule "agents never write"' in text and "ask a person to run this change" in text, text
    assert _emu_ids(emu_client) == list(range(1, 13)), "the denied statement reached the upstream"
    audit_ledger.append({"kind": "deny", "flow": f"policy {via}",
                         "method": "jobs.query" if via == "query_and_wait" else "jobs.insert"})
