"""Just-in-time approvals through the official Python client, the real emulator and the
`querygate approvals` CLI.

A query over 10 GiB (reported by e2e_support.byte_shim) needs an owner's approval: the
client's `result()` / `query_and_wait()` keeps polling while the job waits; an approval
through the CLI lets it complete with the right rows; a denial or an expiry makes it raise
`Forbidden` with the reason. The waiting job lives in the store, so a gateway restart in the
middle does not lose it. A webhook (a local HTTP server here) receives Slack-style JSON.
"""
from __future__ import annotations

import http.server
import json
import os
import secrets
import subprocess
import threading
import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import e2e_support as s

pytestmark = pytest.mark.gateway_only

GIB = 1 << 30
TTL_S = 8
POLICY = """
[[rule]]
name = "large scans need an owner"
who = ["group:agents"]
when = { bytes_over = "10 GiB" }
action = "approve"
approvers = ["group:data-owners"]

[[rule]]
name = "read"
who = ["group:agents", "group:data-owners"]
statements = ["select"]
action = "allow"
"""


class Webhook:
    """A local stand-in for a Slack incoming webhook: records every JSON body it gets."""

    def __init__(self):
        self.posts: list[dict] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                hook.posts.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


class Approvals:
    """The gateway of this module, restartable over the same store."""

    def __init__(self, emulator, workdir):
        self.shim = s.byte_shim(emulator.url)
        self.webhook = Webhook()
        self.workdir = workdir
        self.port, self.admin_port = s.free_port(), s.free_port()
        self.keys = {name: f"qg_e2e_{name}_" + secrets.token_urlsafe(12)
                     for name in ("agent", "owner", "other")}
        identities = {"agent": ("agent:claude-code", "agents"), "owner": ("human:dana", "data-owners"),
                      "other": ("agent:other", "agents")}
        keys = "".join(s.api_key_toml(identities[n][0], [identities[n][1]], s.sha256_hex(k))
                       for n, k in self.keys.items())
        self.config = workdir / "querygate.toml"
        self.config.write_text(
            f'[server]\nbigquery_listen = "127.0.0.1:{self.port}"\nadmin_listen = "127.0.0.1:{self.admin_port}"\n\n'
            f'[store]\npath = "querygate.db"\n\n[approvals]\nticket_ttl = "{TTL_S}s"\n\n'
            f'[notify]\nwebhook = "{self.webhook.url}"\n\n{keys}'
            + s.bigquery_source_toml(f"http://127.0.0.1:{self.shim.server_address[1]}") + POLICY)
        self.server = None
        self.starts = 0

    def start(self):
        self.starts += 1
        self.server = s.Server(
            name="querygate-approvals", argv=[str(s.default_gateway_bin()), "serve", "--config", str(self.config)],
            log_path=self.workdir / f"querygate-{self.starts}.log", env=dict(os.environ, NO_COLOR="1"),
            cwd=self.workdir).start()
        self.server.wait_http(f"http://127.0.0.1:{self.port}/healthz", timeout=30)
        self.server.wait_http(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=30)

    def stop(self):
        if self.server:
            self.server.stop()

    def client(self, who="agent"):
        return s.make_client(f"http://127.0.0.1:{self.port}", self.keys[who])

    def cli(self, *args, who="owner", check=True) -> subprocess.CompletedProcess:
        env = dict(os.environ, QUERYGATE_TOKEN=self.keys[who], NO_COLOR="1")
        cp = subprocess.run([str(s.default_gateway_bin()), "approvals", *args,
                             "--server", f"http://127.0.0.1:{self.admin_port}"],
                            capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert cp.returncode == 0, s.describe(cp)
        return cp

    def pending(self, statement_part: str, timeout=20.0) -> dict:
        """The pending ticket whose statement contains `statement_part`, once it exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tickets = json.loads(self.cli("list", "--state", "pending", "--json").stdout)
            tickets = tickets.get("tickets", tickets) if isinstance(tickets, dict) else tickets
            for t in tickets:
                if statement_part in t["statement"]:
                    return t
            time.sleep(0.2)
        raise AssertionError(f"no pending ticket for {statement_part!r}")


@pytest.fixture(scope="module")
def gw(seeded, emulator, e2e_tmp):
    workdir = e2e_tmp / "approvals"
    workdir.mkdir()
    g = Approvals(emulator, workdir)
    g.start()
    try:
        yield g
    finally:
        g.stop()
        g.shim.shutdown()
        g.webhook.server.shutdown()


class Background:
    """Runs a blocking client call in a thread and keeps its result or exception."""

    def __init__(self, fn):
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.result = fn()
        except Exception as e:  # noqa: BLE001 - kept for the test to assert on
            self.error = e

    def done(self, timeout):
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _sql(tag: str, n_bytes: int = 12 * GIB) -> str:
    return f"SELECT id FROM {s.TABLE_SQL} WHERE id < 3 /* {tag} */ /*bytes={n_bytes}*/"


def test_a_query_waits_in_result_until_approved_through_the_cli(gw):
    sql = _sql("approve-me")
    job = gw.client().query(sql, job_config=bigquery.QueryJobConfig(labels={"querygate-reason": "incident-4711"}))
    waiting = Background(lambda: [r.id for r in job.result(timeout=60)])
    ticket = gw.pending("approve-me")
    assert ticket["requester"] == "agent:claude-code"
    assert ticket["rule"] == "large scans need an owner"
    assert ticket["bytes_estimate"] == 12 * GIB
    assert ticket["reason"] == "incident-4711" and ticket["reason_via"] == "label"
    assert ticket["job_id"] == job.job_id
    assert not waiting.done(1.5), "result() returned before anyone approved"
    # The waiting job says why it waits, where the client shows it (`job.errors`), and does
    # not fail for it.
    held = gw.client().get_job(job.job_id)
    assert held.state == "PENDING" and held.error_result is None
    assert held.errors and held.errors[0]["reason"] == "pendingApproval", held.errors
    assert ticket["id"] in held.errors[0]["message"], held.errors
    assert "group:data-owners" in held.errors[0]["message"], held.errors
    out = gw.cli("approve", ticket["id"], "--reason", "ok for the incident")
    approved = time.monotonic()
    assert ticket["id"] in out.stdout + out.stderr
    assert waiting.done(30), "result() did not return after the approval"
    # Informational (not asserted): how long the client took to notice, from its own polling.
    print(f"\n[approvals] rows reached result() {time.monotonic() - approved:.2f} s after the approval")
    assert waiting.error is None, waiting.error
    assert sorted(waiting.result) == [1, 2]
    # The approvers heard of it, with the ticket and how to approve.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(ticket["id"] in json.dumps(p) for p in gw.webhook.posts):
        time.sleep(0.2)
    post = next(p for p in gw.webhook.posts if ticket["id"] in json.dumps(p))
    assert "agent:claude-code" in post["text"] and f"approvals approve {ticket['id']}" in post["text"], post


def test_a_denial_raises_forbidden_with_the_reason(gw):
    sql = _sql("deny-me")
    waiting = Background(lambda: list(gw.client().query_and_wait(sql)))
    ticket = gw.pending("deny-me")
    gw.cli("deny", ticket["id"], "--reason", "too broad; filter by region")
    assert waiting.done(30)
    assert isinstance(waiting.error, gexc.Forbidden), repr(waiting.error)
    text = str(waiting.error)
    assert "too broad; filter by region" in text and ticket["id"] in text and "human:dana" in text, text


def test_the_requester_and_outsiders_cannot_approve(gw):
    waiting = Background(lambda: list(gw.client().query_and_wait(_sql("self-approve"))))
    ticket = gw.pending("self-approve")
    own = gw.cli("approve", ticket["id"], who="agent", check=False)
    assert own.returncode != 0 and "cannot decide it" in own.stderr, s.describe(own)
    outsider = gw.cli("approve", ticket["id"], who="other", check=False)
    assert outsider.returncode != 0, s.describe(outsider)
    unknown = gw.cli("approve", "tk_000000000000000000000000", check=False)
    assert unknown.returncode != 0 and "no ticket" in unknown.stderr, s.describe(unknown)
    gw.cli("approve", ticket["id"])
    again = gw.cli("approve", ticket["id"], check=False)
    assert again.returncode != 0 and "already" in again.stderr, s.describe(again)
    assert waiting.done(30) and waiting.error is None, waiting.error


def test_an_unanswered_ticket_expires_and_the_job_fails(gw):
    waiting = Background(lambda: list(gw.client().query_and_wait(_sql("let-expire"))))
    ticket = gw.pending("let-expire")
    assert waiting.done(TTL_S + 20), "the job did not end after its ticket expired"
    assert isinstance(waiting.error, gexc.Forbidden), repr(waiting.error)
    assert "expired" in str(waiting.error) and ticket["id"] in str(waiting.error)
    late = gw.cli("approve", ticket["id"], check=False)
    assert late.returncode != 0 and "expired" in late.stderr, s.describe(late)


def test_a_restart_while_the_job_waits_does_not_lose_it(gw):
    job = gw.client().query(_sql("survive-restart"))
    waiting = Background(lambda: [r.id for r in job.result(timeout=90)])
    ticket = gw.pending("survive-restart")
    gw.stop()
    time.sleep(1)
    gw.start()
    assert gw.pending("survive-restart")["id"] == ticket["id"]
    gw.cli("approve", ticket["id"])
    assert waiting.done(60), "the job did not finish after the restart and approval"
    assert waiting.error is None, waiting.error
    assert sorted(waiting.result) == [1, 2]
