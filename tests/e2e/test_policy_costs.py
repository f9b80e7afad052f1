"""Cost control seen from the official Python client: a query over a rule's byte limit and a
query that would cross the daily budget are refused with `Forbidden` and the rule's message.

bqemulator always reports 0 bytes for dry runs and jobs, so this module runs its own gateway
against a small HTTP shim in front of the emulator. The shim forwards everything and only
rewrites byte counts: a query carrying the comment `/*bytes=N*/` is reported as processing
(dry run) and billing (real run) N bytes. Everything else is the real emulator's answer.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import threading
import time
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import e2e_support as s

pytestmark = pytest.mark.gateway_only

GIB = 1 << 30
POLICY = """
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

[budgets]
"group:agents" = "25 GiB"
"""
BYTES = re.compile(r"/\*bytes=(\d+)\*/")


def _shim(upstream: str):
    """An HTTP server that forwards to `upstream` and rewrites byte counts (see the module doc)."""

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


@pytest.fixture(scope="module")
def costly(seeded, emulator, e2e_tmp):
    shim = _shim(emulator.url)
    workdir = e2e_tmp / "costs"
    workdir.mkdir()
    port = s.free_port()
    key = "qg_e2e_costs_" + secrets.token_urlsafe(16)
    config = workdir / "querygate.toml"
    config.write_text(
        f'[server]\nbigquery_listen = "127.0.0.1:{port}"\n\n[store]\npath = "querygate.db"\n\n'
        f'[[api_keys]]\nidentity = "agent:cost-test"\ngroups = ["agents"]\nkey_sha256 = "{s.sha256_hex(key)}"\n\n'
        f'[[sources]]\nname = "analytics"\nkind = "bigquery"\nproject = "{s.PROJECT}"\n'
        f'endpoint = "http://127.0.0.1:{shim.server_address[1]}"\ncredentials = "none"\n' + POLICY)
    env = dict(os.environ, NO_COLOR="1")
    server = s.Server(name="querygate-costs", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=env, cwd=workdir).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield s.make_client(f"http://127.0.0.1:{port}", key)
    finally:
        server.stop()
        shim.shutdown()


RETRY = bigquery.DEFAULT_RETRY.with_deadline(10)


def _sql(n_bytes: int) -> str:
    return f"SELECT id FROM {s.TABLE_SQL} WHERE id < 3 /*bytes={n_bytes}*/"


def test_over_the_rule_limit_is_refused_with_the_rules_message(costly):
    t0 = time.monotonic()
    with pytest.raises(gexc.Forbidden) as ei:
        costly.query_and_wait(_sql(12 * GIB), retry=RETRY)
    assert time.monotonic() - t0 < 5
    text = str(ei.value)
    assert 'rule "large scans need an owner"' in text and "12.0 GiB" in text, text
    assert "group:data-owners" in text, text


def test_the_daily_budget_is_enforced_with_what_remains(costly):
    # Two 10 GiB queries run (each under the rule's limit) and are charged to the budget.
    for _ in range(2):
        rows = list(costly.query_and_wait(_sql(10 * GIB), retry=RETRY))
        assert [r.id for r in rows] == [1, 2]
    with pytest.raises(gexc.Forbidden) as ei:
        costly.query(_sql(6 * GIB), retry=RETRY).result()
    text = str(ei.value)
    assert "daily budget of 25.0 GiB for group:agents" in text and "5.0 GiB remaining" in text, text
