"""OIDC identity with the official Python client: tokens from a real OpenID provider.

Topology (all on 127.0.0.1):

    tests/oidc/server.js (oidc-provider) ──tokens──> google-cloud-bigquery
                                                        │ Bearer <JWT>
                                                        ▼
                                 a second querygate with [[oidc]] ──> bqemulator

The provider issues client-credentials tokens for the agent `claude-code` (group agents),
authorization-code + PKCE tokens for the people alice (engineers) and bob (contractors),
and RFC 8693 token-exchange tokens in which the agent acts for a person (`act`). The
gateway here trusts that issuer and runs rules with `on_behalf_of`. Failed authentication
answers 403 with reason authError (not 401: on a 401 google-auth would try to refresh the
token and hide the gateway's message behind its own RefreshError).
"""
from __future__ import annotations

import json
import os
import time

import pytest

import e2e_support as s

pytestmark = pytest.mark.gateway_only

OIDC_DIR = s.REPO_ROOT / "tests" / "oidc"
SQL = f"SELECT id, name FROM {s.TABLE_SQL} WHERE id <= 3 ORDER BY id"
ROWS = [(c["id"], c["name"]) for c in s.CUSTOMERS[:3]]

#: The delegation rules, shared with crates/querygate/tests/oidc.rs.
RULES = "\n" + (OIDC_DIR / "rules.toml").read_text()


@pytest.fixture(scope="module")
def oidc_gateway(idp, seeded, emulator, e2e_tmp):
    workdir = e2e_tmp / "gateway-oidc"
    workdir.mkdir()
    port = s.free_port()
    config = workdir / "querygate.toml"
    config.write_text(
        "[server]\n"
        f'bigquery_listen = "127.0.0.1:{port}"\n'
        "\n[store]\n"
        f'path = "{workdir / "querygate.db"}"\n'
        "\n[[oidc]]\n"
        f'issuer = "{idp.issuer}"\n'
        'audiences = ["querygate"]\n'
        'groups_claim = "groups"\n'
        'kind_claim = "kind"\n'
        'kind = "human"\n'
        'jwks_min_interval = "1s"\n'
        "\n" + s.bigquery_source_toml(emulator.url)
        + RULES
    )
    env = dict(os.environ, NO_COLOR="1")
    server = s.Server(name="querygate-oidc", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=env, cwd=workdir)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield {"url": f"http://127.0.0.1:{port}", "config": config, "server": server}
    finally:
        server.stop()


def client(gw, token, on_behalf_of=None):
    """The official client with an OIDC token, optionally sending a delegation token."""
    import google.oauth2.credentials
    from google.auth.transport.requests import AuthorizedSession
    from google.cloud import bigquery

    creds = google.oauth2.credentials.Credentials(token=token)
    http = None
    if on_behalf_of:
        http = AuthorizedSession(creds)
        http.headers["x-querygate-on-behalf-of"] = on_behalf_of
    return bigquery.Client(project=s.PROJECT, credentials=creds, _http=http,
                           client_options={"api_endpoint": gw["url"]})


def rows(bq):
    return [(r["id"], r["name"]) for r in bq.query_and_wait(SQL)]


def audit(gw, *args):
    cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gw["config"]), "--json", *args)
    assert cp.returncode == 0, s.describe(cp)
    return [json.loads(line) for line in cp.stdout.splitlines()]


def decided(gw):
    return [r for r in audit(gw) if r["phase"] == "decided"]


def test_a_person_logged_in_at_the_provider_queries_as_themself(idp, oidc_gateway):
    assert rows(client(oidc_gateway, idp.login("alice"))) == ROWS
    r = decided(oidc_gateway)[-1]
    assert (r["identity"], r["kind"], r["groups"], r["auth"]) == (
        "alice", "human", ["engineers"], f"oidc:{idp.issuer}")
    assert r["decision"] == "allow" and r["rule"] == "engineers read"


def test_an_agent_alone_is_refused_with_the_policy_reason(idp, oidc_gateway):
    from google.api_core import exceptions as gexc

    with pytest.raises(gexc.Forbidden) as ei:
        rows(client(oidc_gateway, idp.agent()))
    assert "no policy rule allows SELECT statements for claude-code" in str(ei.value)
    assert decided(oidc_gateway)[-1]["kind"] == "agent"


def test_an_agent_acting_for_a_person_through_token_exchange(idp, oidc_gateway):
    alice = idp.login("alice")
    assert rows(client(oidc_gateway, idp.exchange(alice))) == ROWS
    r = decided(oidc_gateway)[-1]
    assert (r["identity"], r["kind"], r["acting_for"], r["acting_for_groups"], r["rule"]) == (
        "claude-code", "agent", "alice", ["engineers"], "agents for engineers")


def test_an_agent_acting_for_a_person_through_the_delegation_header(idp, oidc_gateway):
    alice = idp.login("alice")
    assert rows(client(oidc_gateway, idp.agent(), on_behalf_of=alice)) == ROWS
    r = decided(oidc_gateway)[-1]
    assert (r["identity"], r["acting_for"], r["groups"]) == ("claude-code", "alice", ["agents"])
    # The audit search finds what was done for alice, and only that.
    for_alice = audit(oidc_gateway, "--acting-for", "alice")
    assert for_alice and all(x["acting_for"] == "alice" for x in for_alice)
    assert {x["identity"] for x in for_alice} == {"claude-code"}


def test_acting_for_a_contractor_is_denied_by_rule(idp, oidc_gateway):
    from google.api_core import exceptions as gexc

    bob = idp.login("bob")
    with pytest.raises(gexc.Forbidden) as ei:
        rows(client(oidc_gateway, idp.exchange(bob)))
    assert "agents may not act for contractors" in str(ei.value)
    assert decided(oidc_gateway)[-1]["acting_for"] == "bob"


@pytest.mark.parametrize("name,make,expect", [
    ("expired", lambda idp, now: idp.forge({"iss": idp.issuer, "sub": "alice", "aud": "querygate",
                                            "iat": now - 7200, "exp": now - 3600,
                                            "groups": ["engineers"], "kind": "human"}), "expired at"),
    ("wrong audience", lambda idp, now: idp.forge({"iss": idp.issuer, "sub": "alice", "aud": "elsewhere",
                                                   "iat": now, "exp": now + 300}), "audience"),
    ("garbage", lambda idp, now: "not-a-token", "not a querygate API key"),
])
def test_bad_tokens_reach_the_client_as_forbidden_with_the_gateways_reason(idp, oidc_gateway, name, make, expect):
    from google.api_core import exceptions as gexc

    token = make(idp, int(time.time()))
    with pytest.raises(gexc.Forbidden) as ei:
        rows(client(oidc_gateway, token))
    err = ei.value
    assert err.errors and err.errors[0]["reason"] == "authError", err.errors
    assert expect in str(err), str(err)
    r = decided(oidc_gateway)[-1]
    assert (r["identity"], r["decision"]) == ("unauthenticated", "deny")
    assert expect in r["reason"]
    assert token not in json.dumps(audit(oidc_gateway)), "a token reached the audit log"
