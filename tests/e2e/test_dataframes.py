"""DataFrames and Arrow through querygate with google-cloud-bigquery-storage installed.

With the Storage Read API package installed, the Python client reads a query's results from
its anonymous destination table over gRPC, straight to bigquerystorage.googleapis.com, which
does not follow `api_endpoint` (reference/bigquery-wire.md §10). querygate keeps these clients
on REST paging by not showing that table in job resources: the client then pages through
getQueryResults, which the gateway serves (masked, audited). This runs the client's DataFrame
and Arrow paths, the `%%bigquery` magic and ibis in a venv that has the storage package
(tests/e2e/.venv-storage) and asserts that every path returned the rows and none opened a
Storage Read session.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import e2e_support as s

pytestmark = pytest.mark.gateway_only

STORAGE_PYTHON = s.HERE / ".venv-storage" / "bin" / "python"


def test_dataframes_and_arrow_page_through_the_gateway(gateway):
    assert STORAGE_PYTHON.exists(), "run tests/e2e/setup.sh (it makes .venv-storage)"
    sql = f"SELECT id, name FROM {s.TABLE_SQL} ORDER BY id"
    env = {**os.environ, "BIGQUERY_EMULATOR_HOST": gateway.url}  # how ibis's own client finds it
    cp = subprocess.run([str(STORAGE_PYTHON), str(s.HERE / "dataframes_client.py"), gateway.url,
                         s.PROJECT, gateway.key, sql], capture_output=True, text=True, timeout=180,
                        env=env)
    assert cp.returncode == 0, cp.stderr[-3000:]
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    want = [{"id": c["id"], "name": c["name"]} for c in s.CUSTOMERS]
    for path in ("job.to_dataframe", "job.to_arrow", "result.to_dataframe",
                 "query_and_wait.to_arrow", "%%bigquery"):
        assert out[path] == want, (path, out[path])
    # The job resource no longer names the anonymous result table, so none of these asked
    # for a Storage Read session.
    assert out["job.destination"] == "None", out
    assert out["read_sessions"] == [], out
    # ibis needs the result table by name (its session dataset), so it is shown to ibis; its
    # reads then ask the Storage Read API for that table, which querygate does not serve yet
    # (a later issue): the read fails closed, at Google's name, with no rows.
    assert isinstance(out["ibis"], str) and "bigquerystorage.googleapis.com" in out["ibis"], out["ibis"]
    assert out["ibis_read_sessions"], out
