"""Cost control seen from the official Python client: a query over a rule's byte limit and a
query that would cross the daily budget are refused with `Forbidden` and the rule's message.

bqemulator always reports 0 bytes for dry runs and jobs, so this module runs its own gateway
against e2e_support.byte_shim in front of the emulator: a query carrying the comment
`/*bytes=N*/` is reported as processing (dry run) and billing (real run) N bytes. Everything
else is the real emulator's answer. (Waiting for approval is test_approvals.py.)
"""
from __future__ import annotations

import os
import secrets
import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import e2e_support as s

pytestmark = pytest.mark.gateway_only

GIB = 1 << 30
POLICY = """
[[rule]]
name = "no huge scans"
who = ["group:agents"]
when = { bytes_over = "100 GiB" }
action = "deny"
message = "narrow the query"

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
@pytest.fixture(scope="module")
def costly(seeded, emulator, e2e_tmp):
    shim = s.byte_shim(emulator.url)
    workdir = e2e_tmp / "costs"
    workdir.mkdir()
    port = s.free_port()
    key = "qg_e2e_costs_" + secrets.token_urlsafe(16)
    config = workdir / "querygate.toml"
    config.write_text(
        f'[server]\nbigquery_listen = "127.0.0.1:{port}"\n\n[store]\npath = "querygate.db"\n\n'
        + s.api_key_toml("agent:cost-test", ["agents"], s.sha256_hex(key))
        + s.bigquery_source_toml(f"http://127.0.0.1:{shim.server_address[1]}") + POLICY)
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
        costly.query_and_wait(_sql(120 * GIB), retry=RETRY)
    assert time.monotonic() - t0 < 5
    text = str(ei.value)
    assert 'rule "no huge scans"' in text and "120.0 GiB" in text and "narrow the query" in text, text


def test_the_daily_budget_is_enforced_with_what_remains(costly):
    # Two 10 GiB queries run (each under the rule's limit) and are charged to the budget.
    for _ in range(2):
        rows = list(costly.query_and_wait(_sql(10 * GIB), retry=RETRY))
        assert [r.id for r in rows] == [1, 2]
    with pytest.raises(gexc.Forbidden) as ei:
        costly.query(_sql(6 * GIB), retry=RETRY).result()
    text = str(ei.value)
    assert "daily budget of 25.0 GiB for group:agents" in text and "5.0 GiB remaining" in text, text
