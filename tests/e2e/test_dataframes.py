"""DataFrames and Arrow through querygate with google-cloud-bigquery-storage installed.

With the Storage Read API package installed, the Python client reads a query's results from
its anonymous destination table over gRPC, straight to bigquerystorage.googleapis.com, which
does not follow `api_endpoint` (reference/bigquery-wire.md §10). querygate keeps these clients
on REST paging by not showing that table in job resources: the client then pages through
getQueryResults, which the gateway serves (masked, audited). This runs the client's DataFrame
and Arrow paths in a venv that has the storage package (tests/e2e/.venv-storage) and asserts
that every path returned the rows and none created a Storage Read client.
"""
from __future__ import annotations

import json
import subprocess

import pytest

import e2e_support as s

pytestmark = pytest.mark.gateway_only

STORAGE_PYTHON = s.HERE / ".venv-storage" / "bin" / "python"


def test_dataframes_and_arrow_page_through_the_gateway(gateway):
    assert STORAGE_PYTHON.exists(), "run tests/e2e/setup.sh (it makes .venv-storage)"
    sql = f"SELECT id, name FROM {s.TABLE_SQL} ORDER BY id"
    cp = subprocess.run([str(STORAGE_PYTHON), str(s.HERE / "dataframes_client.py"), gateway.url,
                         s.PROJECT, gateway.key, sql], capture_output=True, text=True, timeout=180)
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    want = [{"id": c["id"], "name": c["name"]} for c in s.CUSTOMERS]
    for path in ("job.to_dataframe", "job.to_arrow", "result.to_dataframe", "query_and_wait.to_arrow"):
        assert out[path] == want, (path, out[path])
    # The job resource no longer names the anonymous result table, so nothing asks for the
    # Storage Read API.
    assert out["job.destination"] == "None", out
    assert out["storage_clients_created"] == [], out
