"""The embedded engine answers what tools ask first, through the gateway, with the official
Python client: `list_rows(selected_fields=...)` (cells under the right names, masked where the
policy masks), tables' creation and modification times, INFORMATION_SCHEMA.TABLES/COLUMNS,
ARRAY parameters with `IN UNNEST`, positional parameters, the DB-API layer's `@`name``
parameters, and jobs.list paging.

Starts `querygate serve` with a `local` source over small CSV/NDJSON files it writes (no
emulator, no sample data).
"""
from __future__ import annotations

import datetime as dt
import os
import secrets
from pathlib import Path

import pytest
from google.cloud import bigquery
from google.cloud.bigquery import dbapi

import e2e_support as s

pytestmark = pytest.mark.gateway_only


if not s.has_local():
    pytest.skip("querygate was built without the embedded engine", allow_module_level=True)

PROJECT = "local-tools"
CREATED = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.timezone.utc)
MODIFIED = dt.datetime(2024, 6, 2, 8, 30, 0, 750000, tzinfo=dt.timezone.utc)

CONFIG = """
[server]
bigquery_listen = "127.0.0.1:{port}"

[store]
path = "querygate.db"

[[api_keys]]
identity = "agent:tools"
groups = ["agents"]
key_sha256 = "{key_sha256}"

[[sources]]
name = "files"
kind = "local"
project = "{project}"
tables = {{ "shop.customers" = "customers.csv", "shop.orders" = "orders/*.csv", "shop.events" = "events.ndjson" }}

[[classify]]
tag = "email"
columns = ["{project}.shop.customers.email"]

[[mask]]
tag = "email"
strategy = "email_domain"

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select"]
action = "allow"
"""


@pytest.fixture(scope="module")
def local(e2e_tmp):
    work = e2e_tmp / "local-tools"
    (work / "orders").mkdir(parents=True)
    (work / "customers.csv").write_text(
        "id,name,email,score\n"
        "1,Ana Lima,ana@example.com,3.5\n"
        "2,Bo Chen,bo@corp.example,4.25\n"
        "3,Cy Diaz,cy@example.org,\n")
    (work / "events.ndjson").write_text(
        '{"id": 1, "tags": ["a", "b"]}\n'
        '{"id": 2, "tags": ["c"]}\n')
    for name, when in [("a.csv", CREATED), ("b.csv", MODIFIED)]:
        path = work / "orders" / name
        path.write_text("order_id,customer_id,amount\n" + ("1,1,10.5\n" if name == "a.csv" else "2,3,7.0\n"))
        os.utime(path, (when.timestamp(), when.timestamp()))
    key = "qg_local_" + secrets.token_urlsafe(24)
    port = s.free_port()
    config = work / "querygate.toml"
    config.write_text(CONFIG.format(port=port, key_sha256=s.sha256_hex(key), project=PROJECT))
    env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1")
    server = s.Server(name="querygate-local-tools",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=env, cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        client = bigquery.Client(project=PROJECT, credentials=_credentials(key),
                                 client_options={"api_endpoint": f"http://127.0.0.1:{port}"})
        yield client
    finally:
        server.stop()


def _credentials(key: str):
    import google.oauth2.credentials
    return google.oauth2.credentials.Credentials(token=key)


def test_list_rows_with_selected_fields_names_the_cells_right(local):
    table = local.get_table(f"{PROJECT}.shop.customers")
    by_name = {f.name: f for f in table.schema}
    rows = list(local.list_rows(table, selected_fields=[by_name["score"], by_name["name"], by_name["id"]]))
    assert [(r["id"], r["name"], r["score"]) for r in rows] == [
        (1, "Ana Lima", 3.5), (2, "Bo Chen", 4.25), (3, "Cy Diaz", None)]
    # The masked column keeps its mask wherever it is selected.
    rows = list(local.list_rows(table, selected_fields=[by_name["email"], by_name["id"]]))
    assert [(r["id"], r["email"]) for r in rows] == [
        (1, "***@example.com"), (2, "***@corp.example"), (3, "***@example.org")]


def test_tables_report_their_files_times(local):
    table = local.get_table(f"{PROJECT}.shop.orders")
    assert table.created == CREATED
    assert table.modified == MODIFIED
    listed = {t.table_id: t for t in local.list_tables("shop")}
    assert listed["orders"].created == CREATED


def test_information_schema_tables_and_columns(local):
    tables = [r.table_name for r in local.query_and_wait(
        "SELECT table_name FROM shop.INFORMATION_SCHEMA.TABLES ORDER BY table_name")]
    assert tables == ["customers", "events", "orders"]
    columns = [(r.column_name, r.data_type, r.is_nullable) for r in local.query_and_wait(
        f"SELECT column_name, data_type, is_nullable FROM `{PROJECT}.shop.INFORMATION_SCHEMA.COLUMNS` "
        "WHERE table_name = 'events' ORDER BY ordinal_position")]
    assert columns == [("id", "INT64", "YES"), ("tags", "ARRAY<STRING>", "NO")]
    created = list(local.query_and_wait(
        "SELECT creation_time FROM `region-us`.INFORMATION_SCHEMA.TABLES WHERE table_name = 'orders'"))
    assert created[0].creation_time == CREATED


def test_array_and_positional_parameters(local):
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ArrayQueryParameter("ids", "INT64", [1, 3])])
    rows = local.query_and_wait(
        "SELECT name FROM shop.customers WHERE id IN UNNEST(@ids) ORDER BY id", job_config=config)
    assert [r.name for r in rows] == ["Ana Lima", "Cy Diaz"]
    config = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter(None, "INT64", 2),
        bigquery.ScalarQueryParameter(None, "STRING", "Cy Diaz")])
    rows = local.query_and_wait(
        "SELECT id FROM shop.customers WHERE id = ? OR name = ? ORDER BY id", job_config=config)
    assert [r.id for r in rows] == [2, 3]


def test_dbapi_parameters(local):
    cursor = dbapi.connect(client=local).cursor()
    cursor.execute("SELECT name FROM shop.customers WHERE id = %(id)s", {"id": 2})
    assert cursor.fetchall()[0][0] == "Bo Chen"
    cursor.execute("SELECT name FROM shop.customers WHERE id IN UNNEST(%(ids)s) ORDER BY id", {"ids": [1, 2]})
    assert [r[0] for r in cursor.fetchall()] == ["Ana Lima", "Bo Chen"]
    cursor.execute("SELECT name FROM shop.customers WHERE id = %s", (3,))
    assert cursor.fetchall()[0][0] == "Cy Diaz"


def test_list_jobs_pages(local):
    for n in range(3):
        local.query_and_wait(f"SELECT {n} AS n")
    pages = local.list_jobs(max_results=3, page_size=2).pages
    first = list(next(pages))
    assert len(first) == 2
    second = list(next(pages))
    assert len(second) == 1
    ids = [j.job_id for j in first + second]
    assert len(set(ids)) == 3
