"""`querygate demo` and the README's Quickstart, step by step, with the official Python client.

Starts `querygate demo --dir <tmp>` exactly as a user would (no config, no emulator), reads
demo.json, and runs the Quickstart: a query, a masked column (clear for the privacy group), a
denied write, a large scan that waits for the approver and completes once approved through the
CLI, and the audit log verified. Then Ctrl-C: the demo stops cleanly and a second start reuses the
directory (same keys, no regeneration).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery
from google.oauth2.credentials import Credentials

import e2e_support as s

pytestmark = pytest.mark.gateway_only


def _has_demo() -> bool:
    """Whether the binary was built with the embedded engine (the default feature `local`)."""
    if s.DIRECT:
        return False
    cp = s.run_cli(s.default_gateway_bin(), "--help")
    return cp.returncode == 0 and "\n  demo " in cp.stdout


if not _has_demo():
    pytest.skip("querygate was built without the embedded engine (--no-default-features, "
                "QUERYGATE_TEST_LOCAL=0 scripts/test)", allow_module_level=True)

# The Quickstart's statements, as the README writes them.
ORDERS_BY_STATUS = "SELECT status, COUNT(*) AS n FROM shop.orders GROUP BY status ORDER BY n DESC"
CUSTOMERS = "SELECT name, email, card_number FROM shop.customers ORDER BY customer_id LIMIT 3"
DELETE = "DELETE FROM shop.orders WHERE order_date < '2025-01-01'"
BIG_SCAN = ("SELECT page, device, COUNT(*) AS views, SUM(duration_ms) AS ms, MAX(event_time) AS last_seen, "
            "COUNT(DISTINCT customer_id) AS visitors FROM shop.events GROUP BY page, device ORDER BY views DESC")


class Demo:
    def __init__(self, workdir: Path):
        self.dir = workdir / "querygate-demo"
        self.log = workdir / "demo.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    def start(self, timeout: float = 300) -> dict:
        """`querygate demo --dir DIR`, until demo.json exists and the BigQuery front answers."""
        demo_json = self.dir / "demo.json"
        if demo_json.exists():
            demo_json.unlink()
        env = dict(os.environ, NO_COLOR="1")
        self._log = open(self.log, "ab")
        self.proc = subprocess.Popen([str(s.default_gateway_bin()), "demo", "--dir", str(self.dir)],
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"querygate demo exited early:\n{self.log.read_text()[-4000:]}"
            if demo_json.exists():
                try:
                    self.info = json.loads(demo_json.read_text())
                    import requests
                    if requests.get(self.info["bigquery_endpoint"] + "/healthz", timeout=1).status_code == 200:
                        return self.info
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.2)
        raise AssertionError(f"querygate demo not ready after {timeout}s:\n{self.log.read_text()[-4000:]}")

    def interrupt(self) -> int:
        """Ctrl-C, as a user would press it."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self._log.close()
        return code

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def client(self, who: str) -> bigquery.Client:
        # The Quickstart's client: nothing but the endpoint and the key.
        return bigquery.Client(project=self.info["project"], credentials=Credentials(token=self.info["keys"][who]),
                               client_options={"api_endpoint": self.info["bigquery_endpoint"]})

    def cli(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, NO_COLOR="1")
        if token:
            env["QUERYGATE_TOKEN"] = token
        return subprocess.run([str(s.default_gateway_bin()), *args], capture_output=True, text=True,
                              env=env, timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def demo(e2e_tmp):
    d = Demo(e2e_tmp / "demo")
    d.dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    d.start()
    print(f"\n[demo] first start (sample data generated) took {time.monotonic() - started:.1f} s")
    try:
        yield d
    finally:
        d.kill()


def test_demo_json_names_the_endpoints_config_and_keys(demo):
    info = demo.info
    assert info["project"] == "demo"
    assert info["bigquery_endpoint"].startswith("http://127.0.0.1:")
    assert info["admin_endpoint"].startswith("http://127.0.0.1:")
    assert info["mcp_endpoint"].startswith("http://127.0.0.1:") and info["mcp_endpoint"].endswith("/mcp")
    assert Path(info["config"]).is_file()
    assert set(info["keys"]) >= {"agent", "analyst", "approver", "privacy"}
    log = demo.log.read_text()
    # The banner prints every key and a snippet to paste.
    for key in info["keys"].values():
        assert key in log
    assert "from google.cloud import bigquery" in log and "approvals approve" in log
    assert f"claude mcp add --transport http querygate {info['mcp_endpoint']}" in log


def test_the_machines_postgresql_is_a_source_behind_the_postgresql_front(demo):
    pg = demo.info.get("postgres")
    if not pg:
        pytest.skip("no PostgreSQL answered on 127.0.0.1:5432 as postgres: the demo has no postgres source")
    import psycopg

    def rows(who: str):
        dsn = (f"host={pg['host']} port={pg['port']} dbname={pg['dbname']} user={who} "
               f"password={demo.info['keys'][who]} sslmode=disable")
        with psycopg.connect(dsn) as c:
            return c.execute("SELECT name, email FROM customers ORDER BY id").fetchall()

    clear = rows("privacy")
    masked = rows("agent")
    assert [n for n, _ in masked] == [n for n, _ in clear] and len(clear) == 4
    assert [e for _, e in masked] == ["***@" + e.split("@")[1] for _, e in clear], masked
    assert f"psql \"host={pg['host']} port={pg['port']} dbname={pg['dbname']} user=agent\"" in demo.log.read_text()


def test_quickstart_1_run_a_query(demo):
    rows = list(demo.client("agent").query_and_wait(ORDERS_BY_STATUS))
    assert {r.status for r in rows} == {"placed", "paid", "shipped", "delivered", "returned"}
    assert sum(r.n for r in rows) == 60_000


def test_quickstart_2_a_masked_column(demo):
    clear = list(demo.client("privacy").query_and_wait(CUSTOMERS))
    assert len(clear) == 3 and all("@" in r.email and not r.email.startswith("***") for r in clear)
    assert all(len(r.card_number) == 16 and r.card_number.isdigit() for r in clear)
    # The agent: the same rows, with the masked columns rewritten to their masks.
    masked = list(demo.client("agent").query_and_wait(CUSTOMERS))
    assert [r.name for r in masked] == [r.name for r in clear]
    assert [r.email for r in masked] == ["***@" + c.email.split("@")[1] for c in clear], masked
    assert [r.card_number for r in masked] == ["*" * 12 + c.card_number[-4:] for c in clear], masked


def test_a_hashed_column_still_groups_and_narrow_queries_are_not_billed_for_it(demo):
    # shop.events.ip_address is masked with the keyed hash for everyone but the privacy group.
    sql = "SELECT event_id, ip_address FROM shop.events ORDER BY event_id LIMIT 3"
    clear = list(demo.client("privacy").query_and_wait(sql))
    hashed = list(demo.client("analyst").query_and_wait(sql))
    assert [r.event_id for r in hashed] == [r.event_id for r in clear] == [1, 2, 3]
    assert all(r.ip_address.startswith("10.") for r in clear), clear
    assert all(re.fullmatch("[0-9a-f]{64}", r.ip_address) for r in hashed), hashed
    # Equal values hash alike: grouping by the hash finds as many addresses as the clear values.
    distinct = "SELECT COUNT(DISTINCT ip_address) AS n FROM shop.events"
    assert (list(demo.client("analyst").query_and_wait(distinct))[0].n
            == list(demo.client("privacy").query_and_wait(distinct))[0].n > 1000)
    # The masking rewrite names every column of shop.events, but a query is estimated (and so
    # judged by the approval rule) by the columns it reads: the same bytes as unmasked.
    narrow = "SELECT page, COUNT(*) AS n FROM shop.events GROUP BY page"
    dry = bigquery.QueryJobConfig(dry_run=True)
    agent_bytes = demo.client("agent").query(narrow, job_config=dry).total_bytes_processed
    privacy_bytes = demo.client("privacy").query(narrow, job_config=dry).total_bytes_processed
    assert 0 < agent_bytes == privacy_bytes < 8 * 1024 * 1024
    # A column only filtered on is read, and billed, too.
    filtered = "SELECT page FROM shop.events WHERE ip_address LIKE '10.1.%'"
    assert demo.client("privacy").query(filtered, job_config=dry).total_bytes_processed > privacy_bytes + 1024 * 1024
    rows = list(demo.client("agent").query(narrow).result(timeout=60))
    assert sum(r.n for r in rows) == 1_200_000


def test_quickstart_3_a_denied_write(demo):
    with pytest.raises(gexc.Forbidden) as e:
        demo.client("agent").query_and_wait(DELETE)
    assert "read-only" in str(e.value), e.value
    # Nothing was deleted.
    rows = list(demo.client("analyst").query_and_wait("SELECT COUNT(*) AS n FROM shop.orders"))
    assert rows[0].n == 60_000


def test_quickstart_4_a_large_scan_waits_for_the_approver(demo):
    config = demo.info["config"]
    approver = demo.info["keys"]["approver"]
    job = demo.client("agent").query(BIG_SCAN)
    result: dict = {}
    waiting = threading.Thread(target=lambda: result.update(rows=list(job.result(timeout=120))), daemon=True)
    waiting.start()
    ticket = None
    deadline = time.monotonic() + 30
    while ticket is None and time.monotonic() < deadline:
        cp = demo.cli("approvals", "list", "--config", config, "--state", "pending", "--json", token=approver)
        assert cp.returncode == 0, s.describe(cp)
        listed = json.loads(cp.stdout)
        listed = listed.get("tickets", listed) if isinstance(listed, dict) else listed
        ticket = next((t for t in listed if "shop.events" in t["statement"]), None)
        time.sleep(0.3)
    assert ticket is not None, "no pending ticket for the large scan"
    assert ticket["requester"] == "agent:demo-agent"
    assert ticket["rule"] == "large scans by agents need an approver"
    assert ticket["bytes_estimate"] > 8 * 1024 * 1024
    waiting.join(1.5)
    assert waiting.is_alive(), "result() returned before anyone approved"
    cp = demo.cli("approvals", "approve", ticket["id"], "--config", config, token=approver)
    assert cp.returncode == 0, s.describe(cp)
    waiting.join(60)
    assert not waiting.is_alive(), "result() did not return after the approval"
    rows = result["rows"]
    assert len(rows) == 21  # 7 pages x 3 devices
    assert sum(r.views for r in rows) == 1_200_000


def test_quickstart_5_verify_the_audit_log(demo):
    config = demo.info["config"]
    cp = demo.cli("audit", "verify", "--config", config)
    assert cp.returncode == 0, s.describe(cp)
    cp = demo.cli("audit", "search", "--config", config, "--identity", "agent:demo-agent",
                  "--decision", "deny", "--json")
    assert cp.returncode == 0, s.describe(cp)
    assert "DELETE FROM shop.orders" in cp.stdout and "the sample data is read-only" in cp.stdout


def test_ctrl_c_stops_cleanly_and_a_restart_reuses_the_directory(demo):
    keys = dict(demo.info["keys"])
    events = demo.dir / "data" / "events.parquet"
    mtime = events.stat().st_mtime_ns
    assert demo.interrupt() == 0, demo.log.read_text()[-4000:]
    assert events.exists() and (demo.dir / "querygate.toml").exists()
    demo.start(timeout=120)
    assert demo.info["keys"] == keys
    assert events.stat().st_mtime_ns == mtime, "the sample data was regenerated"
    rows = list(demo.client("agent").query_and_wait("SELECT COUNT(*) AS n FROM shop.events"))
    assert rows[0].n == 1_200_000
