"""Session recording through the official Python client and the real emulator.

A client that names no session (no `x-querygate-session` header, no label) runs a few
queries through a gateway of this module's own; the gateway puts them in one session (one
identity, one client, one address). `querygate sessions list --json` finds it and
`querygate sessions show ID --json` gives back what the client saw: the statements in
order, the decisions, and in the recorded response bodies the very rows the client got.
"""
from __future__ import annotations

import json
import secrets
import time

import pytest
from google.api_core import exceptions as gexc

import e2e_support as s

pytestmark = pytest.mark.gateway_only

T = s.TABLE_SQL


class Sessions:
    """A gateway recording sessions, over its own store."""

    def __init__(self, emulator, workdir):
        self.port = s.free_port()
        self.key = "qg_e2e_sessions_" + secrets.token_urlsafe(16)
        self.config = s.write_gateway_config(
            workdir / "querygate.toml", listen_port=self.port, store=workdir / "querygate.db",
            key_sha256=s.sha256_hex(self.key), emulator_url=emulator.url)
        # Emails are masked in results by the source's value detectors, so the recording must
        # hold the masked values the client got, never the clear ones.
        text = self.config.read_text()
        assert 'credentials = "none"\n' in text
        text = text.replace('credentials = "none"\n',
                            'credentials = "none"\ndetect = ["email"]\ndetect_strategy = "email_domain"\n', 1)
        self.config.write_text(text + '\n[recording]\nmax_response_bytes = "256 KiB"\n')
        self.server = s.Server(
            name="querygate-sessions", argv=[str(s.default_gateway_bin()), "serve", "--config", str(self.config)],
            log_path=workdir / "querygate.log", env=None, cwd=workdir).start()
        self.server.wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=30)

    def client(self):
        return s.make_client(f"http://127.0.0.1:{self.port}", self.key)

    def cli(self, *args) -> str:
        cp = s.run_cli(s.default_gateway_bin(), "sessions", *args, "--config", str(self.config))
        assert cp.returncode == 0, s.describe(cp)
        return cp.stdout

    def audit(self) -> list[dict]:
        cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--json", "--config", str(self.config))
        assert cp.returncode == 0, s.describe(cp)
        return [json.loads(line) for line in cp.stdout.splitlines()]


@pytest.fixture(scope="module")
def gw(seeded, emulator, e2e_tmp):
    workdir = e2e_tmp / "sessions"
    workdir.mkdir()
    g = Sessions(emulator, workdir)
    try:
        yield g
    finally:
        g.server.stop()


def rows_of(body: str) -> list[list]:
    """The `rows[].f[].v` of a recorded BigQuery result body."""
    return [[cell["v"] for cell in row["f"]] for row in json.loads(body).get("rows", [])]


def test_a_clients_queries_are_one_session_that_shows_what_the_client_saw(gw):
    client = gw.client()
    q1 = f"SELECT id, name FROM {T} WHERE id <= 3 ORDER BY id"
    job = client.query(q1)
    seen1 = [(r["id"], r["name"]) for r in job.result()]
    assert [i for i, _ in seen1] == [1, 2, 3]
    q2 = f"SELECT id, email FROM {T} WHERE id > 10 ORDER BY id"
    result2 = client.query_and_wait(q2)
    seen2 = [(r["id"], r["email"]) for r in result2]
    assert [i for i, _ in seen2] == [11, 12]
    # The client got the emails masked by the detectors (domain kept).
    assert all(m.startswith("***@") for _, m in seen2), seen2
    q3 = f"DELETE FROM {T} WHERE TRUE"
    with pytest.raises(gexc.Forbidden):
        client.query_and_wait(q3)
    # The last segment lands within a quarter second; wait for the denial's response.
    deadline = time.monotonic() + 10
    while True:
        sessions = [json.loads(line) for line in gw.cli("list", "--json").splitlines()]
        if sessions:
            doc = json.loads(gw.cli("show", sessions[0]["id"], "--json"))
            statements = [e.get("statement") for e in doc["events"] if e["type"] == "request"]
            if q3 in statements and doc["events"][-1]["type"] == "response":
                break
        assert time.monotonic() < deadline, f"the session never recorded the denial: {sessions}"
        time.sleep(0.2)

    # One session: the client named none, and all its requests came from one client.
    assert len(sessions) == 1, sessions
    session = sessions[0]
    assert session["id"].startswith("ss_")
    assert session["identities"] == [s.IDENTITY]
    events = doc["events"]
    requests = [e for e in events if e["type"] == "request"]
    assert len(requests) == session["requests"] >= 4  # q1 (+ its polls), q2, q3
    # The statements in the order the client sent them.
    queried = [e["statement"] for e in requests if e.get("statement")]
    assert queried == [q1, q2, q3], queried
    assert all(e["identity"] == s.IDENTITY and "python" in e.get("user_agent", "") for e in requests)

    by_request: dict[str, list[dict]] = {}
    for e in events:
        by_request.setdefault(e["request_id"], []).append(e)

    def decision_of(statement):
        rid = next(e["request_id"] for e in requests if e.get("statement") == statement)
        return next(e for e in by_request[rid] if e["type"] == "decision")

    assert decision_of(q1)["decision"] == "allow"
    assert decision_of(q2)["decision"] == "allow"
    denial = decision_of(q3)
    assert denial["decision"] == "deny" and denial["rule"] == "agents never write"
    rid3 = denial["request_id"]
    denied = [e for e in by_request[rid3] if e["type"] == "response"][0]
    assert denied["status"] == 403 and "read-only" in denied["error"]
    assert not [e for e in by_request[rid3] if e["type"] == "upstream"], "a denial never goes upstream"

    # The rows the client got are in the recorded responses of each query's job.
    def recorded_rows(job_id):
        got = []
        for e in events:
            if e["type"] != "response" or e.get("job_id") != job_id or not e.get("body"):
                continue
            assert not e.get("truncated"), e
            got.extend(rows_of(e["body"]))
        return got

    assert [[int(r[0]), r[1]] for r in recorded_rows(job.job_id)] == [[i, n] for i, n in seen1]
    response2 = [e for e in events if e["type"] == "response" and e.get("job_id") == result2.job_id]
    assert any(e.get("rows") == 2 for e in response2), response2
    assert [[int(r[0]), r[1]] for r in recorded_rows(result2.job_id)] == [[i, m] for i, m in seen2]
    # Replayed (paced, here 1000x), the session gives back the same events, in order.
    replayed = [json.loads(line) for line in gw.cli("replay", session["id"], "--speed", "1000", "--json").splitlines()]
    assert replayed == events, "replay differs from show"
    # No clear protected value anywhere in the recording.
    recording = json.dumps(doc)
    clear = [c["email"] for c in s.CUSTOMERS]
    assert not [e for e in clear if e in recording], "a clear email reached the recording"

    # What went upstream: the statements as sent, only for allowed requests.
    upstream = [e.get("statement") for e in events if e["type"] == "upstream" and e.get("statement")]
    assert upstream == [q1, q2]

    # The key the client presented is nowhere in the recording; the audit log names the session.
    assert gw.key not in json.dumps(doc)
    assert any(r.get("session") == session["id"] for r in gw.audit())

    # The transcript a person reads names the statements, decisions and rows.
    text = gw.cli("show", session["id"])
    assert q1 in text and "decision: deny" in text and seen1[0][1] in text, text
