"""Masking, as far as it goes today, through the official Python client and the emulator.

Columns classified `pii` (`shop.customers.email`) are masked for everyone but the privacy
group. Until reads of masked columns are rewritten, a query that returns one (directly, by
`*`, through an expression) or filters on one is refused with a message naming the column
and what to do instead, and so is a direct row read of the table; queries that leave it out
run, and the privacy group sees clear values.
"""
from __future__ import annotations

import secrets

import pytest
from google.api_core import exceptions as gexc

import e2e_support as s

pytestmark = pytest.mark.gateway_only

T = s.TABLE_SQL
MASKING = """
[[classify]]
tag = "pii"
columns = ["*.shop.customers.email"]

[[mask]]
tag = "pii"
strategy = "redact"
unmasked_for = ["group:privacy"]
predicates = "deny"
"""


@pytest.fixture(scope="module")
def gw(seeded, emulator, e2e_tmp):
    workdir = e2e_tmp / "masking"
    workdir.mkdir()
    port = s.free_port()
    agent_key = "qg_e2e_mask_agent_" + secrets.token_urlsafe(12)
    privacy_key = "qg_e2e_mask_privacy_" + secrets.token_urlsafe(12)
    config = s.write_gateway_config(workdir / "querygate.toml", listen_port=port, store=workdir / "querygate.db",
                                    key_sha256=s.sha256_hex(agent_key), emulator_url=emulator.url)
    text = config.read_text()
    text = text.replace("\n[[sources]]\n",
                        f'\n[[api_keys]]\nidentity = "human:priya"\ngroups = ["privacy", "agents"]\n'
                        f'key_sha256 = "{s.sha256_hex(privacy_key)}"\n\n[[sources]]\n', 1)
    config.write_text(text + MASKING)
    server = s.Server(name="querygate-masking",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=None, cwd=workdir).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        endpoint = f"http://127.0.0.1:{port}"
        yield s.make_client(endpoint, agent_key), s.make_client(endpoint, privacy_key)
    finally:
        server.stop()


@pytest.mark.parametrize("sql", [
    f"SELECT id, email FROM {T}",
    f"SELECT * FROM {T}",
    f"SELECT UPPER(email) AS e FROM {T}",
    f"WITH c AS (SELECT email AS x FROM {T}) SELECT x FROM c",
    f"SELECT id FROM {T} WHERE email LIKE 'a%'",
])
def test_queries_reaching_the_masked_column_are_refused_with_what_to_do(gw, sql):
    agent, _ = gw
    with pytest.raises(gexc.Forbidden) as ei:
        agent.query_and_wait(sql)
    text = str(ei.value)
    assert "shop.customers.email is classified pii and masked for agent:claude-code" in text, text


def test_queries_that_leave_it_out_run(gw):
    agent, _ = gw
    rows = list(agent.query_and_wait(f"SELECT * EXCEPT (email) FROM {T} ORDER BY id"))
    assert len(rows) == 12
    assert "email" not in rows[0].keys()


def test_a_direct_row_read_of_the_table_is_refused(gw):
    agent, _ = gw
    with pytest.raises(gexc.Forbidden) as ei:
        list(agent.list_rows(s.TABLE_ID))
    assert "classified pii" in str(ei.value)


def test_the_privacy_group_sees_clear_values(gw):
    _, privacy = gw
    rows = list(privacy.query_and_wait(f"SELECT email FROM {T} WHERE id = 1"))
    assert rows[0]["email"] == s.CUSTOMERS[0]["email"]
