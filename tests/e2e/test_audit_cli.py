"""The audit trail, checked through the `querygate audit` CLI the way an auditor would.

Runs after every other e2e module (see conftest.pytest_collection_modifyitems):
each flow those modules ran is in `audit_ledger`, and must show up here with
identity agent:claude-code, the complete statement, the right decision and
the right row count.  This module also runs a few flows of its own (so it is
meaningful when run alone), then checks tail/export/verify and that `verify`
catches tampering on a copy of the store.
"""
from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import re
import sqlite3
import time

import pytest
from google.api_core import exceptions as gexc

import e2e_support as s

pytestmark = pytest.mark.gateway_only

T = s.TABLE_SQL
FIELDS = ["seq", "time", "request_id", "phase", "identity", "groups", "source", "method", "statement",
          "decision", "reason", "job_id", "status", "rows", "bytes_processed", "bytes_billed",
          "duration_ms", "prev_hash", "hash"]
ROW_METHODS = ("jobs.query", "jobs.getQueryResults")


# ------------------------------------------------------------------ helpers

def cli(gateway, *args, config=None, check=True):
    cp = s.run_cli(gateway.binary, *args[:2], "--config", str(config or gateway.config_path), *args[2:])
    if check:
        assert cp.returncode == 0, s.describe(cp)
    return cp


def json_lines(cp):
    out = []
    for line in cp.stdout.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AssertionError(f"not JSON Lines ({exc}): {line[:300]!r}\n{s.describe(cp)}") from None
    return out


def search(gateway):
    return json_lines(cli(gateway, "audit", "search", "--identity", s.IDENTITY, "--since", "1h", "--json"))


def _rows(r):
    return r.get("rows") or 0


def ledger_problems(records, ledger):
    """Every expectation the flow tests recorded, checked against the audit records."""
    problems = []
    by_method = collections.defaultdict(list)
    for r in records:
        by_method[r.get("method")].append(r)

    def seen_statements(method):
        return sorted({str(r.get("statement"))[:120] for r in by_method[method]})

    statements = collections.Counter(e["statement"] for e in ledger if e["kind"] == "query")
    dupes = [st for st, n in statements.items() if n > 1]
    if dupes:  # a test-suite bug: flows must be told apart by their statement
        problems.append(f"ledger: these statements are used by more than one flow: {dupes}")

    deny_need = []
    pages_need = collections.Counter()
    for e in ledger:
        flow = e["flow"]
        if e["kind"] == "query":
            cands = [r for r in by_method[e["method"]] if r.get("statement") == e["statement"]]
            if not cands:
                problems.append(f"[{flow}] no {e['method']} record with the complete statement "
                                f"{e['statement']!r}; {e['method']} statements seen: {seen_statements(e['method'])}")
                continue
            bad = [r["seq"] for r in cands if r.get("decision") != "allow"]
            if bad:
                problems.append(f"[{flow}] decision is not 'allow' in seq {bad}")
            job_ids = {r.get("job_id") for r in cands} - {None}
            if e.get("job_id") and e["job_id"] not in job_ids:
                problems.append(f"[{flow}] job_id {e['job_id']!r} not recorded (records have {sorted(job_ids)})")
            job_ids |= {e.get("job_id")} - {None}
            # rows reach the client in jobs.query / getQueryResults responses of this job
            # (by job id; by statement only if no job id was recorded at all)
            related = {r["seq"]: r for r in records
                       if r.get("phase") == "completed" and r.get("method") in ROW_METHODS
                       and (r.get("job_id") in job_ids if job_ids else r.get("statement") == e["statement"])}
            total = sum(_rows(r) for r in related.values())
            if total != e["rows"]:
                problems.append(f"[{flow}] rows counted {total} != {e['rows']} rows the client received "
                                f"(completed {ROW_METHODS} records: "
                                f"{[(r['seq'], r['method'], r.get('rows')) for r in related.values()]})")
        elif e["kind"] == "deny":
            deny_need.append(e)
        elif e["kind"] == "tabledata":
            pages_need.update(e["pages"])
        elif e["kind"] == "call":
            cands = [r for r in by_method[e["method"]]
                     if r.get("decision") == "allow" and (e.get("job_id") is None or r.get("job_id") == e["job_id"])]
            if not cands:
                problems.append(f"[{flow}] no allowed {e['method']} record"
                                + (f" with job_id {e['job_id']!r}" if e.get("job_id") else ""))
        else:  # pragma: no cover
            problems.append(f"unknown ledger kind {e['kind']!r}")

    # Each denied request (one request_id) must be claimed by exactly one denied flow;
    # flows naming a job id claim first.  Leftovers would be client retries of a denial.
    pool = {}
    for r in records:
        if r.get("decision") == "deny":
            pool.setdefault(r.get("request_id"), []).append(r)
    for e in sorted(deny_need, key=lambda e: e.get("job_id") is None):
        methods = e["method"] if isinstance(e["method"], list) else [e["method"]]
        match = next((rid for rid, recs in pool.items()
                      if recs[0].get("method") in methods
                      and (e.get("job_id") is None or recs[0].get("job_id") == e["job_id"])), None)
        if match is None:
            problems.append(f"[{e['flow']}] no denied {' or '.join(methods)} request"
                            + (f" with job_id {e['job_id']!r}" if e.get("job_id") else "")
                            + f"; denied requests not yet matched: "
                            f"{[(rs[0]['seq'], rs[0].get('method'), rs[0].get('job_id')) for rs in pool.values()]}")
            continue
        recs = pool.pop(match)
        statuses = {r.get("status") for r in recs} - {None}
        want = e.get("status", 403)
        if statuses != {want}:
            problems.append(f"[{e['flow']}] denied request seq {[r['seq'] for r in recs]} has status {statuses}, not {want}")
    if pool:
        problems.append("denied requests that no flow explains (a retried denial?): "
                        f"{[(rs[0]['seq'], rs[0].get('method'), rs[0].get('job_id')) for rs in pool.values()]}")

    have_pages = collections.Counter(_rows(r) for r in by_method["tabledata.list"]
                                     if r.get("phase") == "completed" and r.get("decision") == "allow")
    missing = pages_need - have_pages
    if missing:
        problems.append(f"tabledata.list pages with these row counts are missing: {dict(missing)} "
                        f"(completed tabledata.list rows seen: {dict(have_pages)})")
    return problems


def backup_store(gateway, dest):
    """Consistent copy of the live store (includes WAL content) via SQLite's backup API."""
    src = sqlite3.connect(f"file:{gateway.store_path}?mode=ro", uri=True, timeout=10)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return dest


def copy_config(gateway, db_path):
    """A config like the gateway's, whose [store] is db_path (next to it, same stem)."""
    text = gateway.config_path.read_text()
    new = text.replace(f'path = "{gateway.store_path}"', f'path = "{db_path}"')
    assert new != text
    cfg = db_path.with_suffix(".toml")
    cfg.write_text(new)
    return cfg


def first_named_seq(cp):
    m = re.search(r"\bseq\D{0,3}(\d+)", cp.stdout + "\n" + cp.stderr)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def own_flows(bq, audit_ledger):
    """A few flows run by this module itself (also makes it meaningful on its own)."""
    # a long statement with non-ASCII text: the audit must keep it byte-for-byte
    names = ", ".join(f"'nobody-{i:04d}'" for i in range(700))
    sql = (f"SELECT id, name\nFROM {T}\nWHERE name IN ({names})\n"
           f"   OR (id = 12 AND name != 'Zoë ✓ “quoted”')\nORDER BY id")
    assert len(sql) > 8000
    rows = bq.query_and_wait(sql)
    assert [(r.id, r.name) for r in rows] == [(12, "John Backus")]
    audit_ledger.append({"kind": "query", "flow": "audit: long unicode statement", "method": "jobs.query",
                         "statement": sql, "job_id": rows.job_id, "rows": 1})

    sql2 = f"SELECT email FROM {T} WHERE id BETWEEN 2 AND 6 ORDER BY id"
    job = bq.query(sql2)
    assert len(list(job.result(page_size=3))) == 5
    audit_ledger.append({"kind": "query", "flow": "audit: paged query", "method": "jobs.insert",
                         "statement": sql2, "job_id": job.job_id, "rows": 5})

    with pytest.raises(gexc.Forbidden):
        bq.insert_rows_json(s.TABLE_ID, [{"id": 500}])
    audit_ledger.append({"kind": "deny", "flow": "audit: insert_rows_json", "method": "tabledata.insertAll"})


@pytest.fixture(scope="module")
def records(gateway, own_flows, audit_ledger):
    """`audit search` output once every ledger expectation is met (records may land a bit late)."""
    deadline = time.monotonic() + 10
    while True:
        recs = search(gateway)
        if not ledger_problems(recs, audit_ledger) or time.monotonic() > deadline:
            return recs
        time.sleep(0.5)


# ------------------------------------------------------------------ tests

def test_search_records_follow_the_contract(records):
    assert records, "audit search returned no records"
    now = dt.datetime.now(dt.timezone.utc)
    for r in records:
        missing = [f for f in FIELDS if f not in r]
        assert not missing, f"seq {r.get('seq')}: missing fields {missing}: {r}"
        assert r["identity"] == s.IDENTITY
        assert r["groups"] == s.GROUPS
        assert r["phase"] in ("decided", "completed"), r
        assert r["decision"] in ("allow", "deny"), r
        assert isinstance(r["seq"], int)
        t = dt.datetime.fromisoformat(r["time"].replace("Z", "+00:00"))
        assert t.tzinfo is not None and now - dt.timedelta(hours=1) <= t <= now + dt.timedelta(minutes=1), r["time"]
        if r["phase"] == "completed":
            assert isinstance(r["status"], int), r
        if r["decision"] == "allow":
            assert r["source"] == s.SOURCE, r
        assert isinstance(r["hash"], str) and r["hash"] and isinstance(r["prev_hash"], str), r
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_each_request_decided_once_and_completed(records):
    phases = collections.defaultdict(list)
    for r in records:
        phases[r["request_id"]].append(r)
    assert None not in phases, "records without request_id"
    for rid, recs in phases.items():
        kinds = collections.Counter(r["phase"] for r in recs)
        assert kinds["decided"] == 1 and kinds["completed"] <= 1, (rid, [(r["seq"], r["phase"]) for r in recs])
        decided = next(r for r in recs if r["phase"] == "decided")
        if decided["decision"] == "allow":
            assert kinds["completed"] == 1, f"request {rid} ({decided['method']}) never completed"


def test_every_flow_is_audited(records, audit_ledger):
    assert audit_ledger, "no flows recorded"
    problems = ledger_problems(records, audit_ledger)
    assert not problems, "audit trail does not match what the clients did:\n  " + "\n  ".join(problems)


def test_denials_carry_a_reason(records):
    denied = [r for r in records if r["decision"] == "deny"]
    assert denied
    for r in denied:
        assert isinstance(r["reason"], str) and r["reason"], r


def test_api_key_is_not_stored_or_logged(gateway, records):
    key = gateway.key.encode()
    for path in gateway.store_path.parent.glob(gateway.store_path.name + "*"):
        assert key not in path.read_bytes(), f"API key found in {path}"
    assert key not in gateway.server.log_path.read_bytes(), "API key found in the gateway log"
    assert gateway.key not in json.dumps(records)


def test_tail_shows_the_latest_records(gateway, records):
    tail = json_lines(cli(gateway, "audit", "tail", "-n", "3", "--json"))
    assert len(tail) == 3
    export = json_lines(cli(gateway, "audit", "export", "--format", "jsonl"))
    assert [r["seq"] for r in tail] == [r["seq"] for r in export[-3:]]
    human = cli(gateway, "audit", "tail", "-n", "2")
    assert human.stdout.strip(), "audit tail printed nothing"


def test_export_is_a_complete_hash_chain(gateway, records, tmp_path):
    export = json_lines(cli(gateway, "audit", "export", "--format", "jsonl"))
    lacking = [r["seq"] for r in export if "prev_hash" not in r or "hash" not in r]
    assert not lacking, f"exported records without prev_hash/hash (seq {lacking[:5]}...): the chain cannot be checked"
    seqs = [r["seq"] for r in export]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "export has gaps or is out of order"
    for prev, cur in zip(export, export[1:]):
        assert cur["prev_hash"] == prev["hash"], f"chain broken between seq {prev['seq']} and {cur['seq']}"
    assert {r["seq"] for r in records} <= set(seqs)
    db = sqlite3.connect(backup_store(gateway, tmp_path / "snap.db"))
    in_db = db.execute("SELECT seq, prev_hash, hash FROM audit_log ORDER BY seq").fetchall()
    db.close()
    # SQLite indexes the journal in batches: what it holds is a prefix of the export, and
    # the rest (journalled, not yet indexed) continues the same chain.
    assert in_db, "nothing indexed"
    assert [(r["seq"], r["prev_hash"], r["hash"]) for r in export][: len(in_db)] == in_db[: len(export)]


def test_verify_passes_on_the_live_store(gateway, records):
    cp = cli(gateway, "audit", "verify")
    assert cp.returncode == 0
    cpj = cli(gateway, "audit", "verify", "--json")
    json.loads(cpj.stdout)  # some JSON document


def test_store_is_append_only(gateway, records, tmp_path):
    db = sqlite3.connect(backup_store(gateway, tmp_path / "triggers.db"))
    try:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"audit_no_update", "audit_no_delete"} <= names, names
        for stmt in ("UPDATE audit_log SET record = record || ' ' WHERE seq = (SELECT min(seq) FROM audit_log)",
                     "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log)"):
            with pytest.raises(sqlite3.DatabaseError):
                db.execute(stmt)
    finally:
        db.close()


def _edit(db, n):
    k = n // 2
    (rec,) = db.execute("SELECT record FROM audit_log WHERE seq = ?", (k,)).fetchone()
    new = rec.replace(s.IDENTITY, "agent:innocent-bystander", 1) if s.IDENTITY in rec else rec.replace("}", " }", 1)
    assert new != rec
    db.execute("UPDATE audit_log SET record = ? WHERE seq = ?", (new, k))
    return {k}


def _delete(db, n):
    k = n // 2
    db.execute("DELETE FROM audit_log WHERE seq = ?", (k,))
    return {k, k + 1}  # the missing seq, or the first record after the gap


def _swap(db, n):
    a, b = n // 3, n // 3 + 2
    ra = db.execute("SELECT record, prev_hash, hash FROM audit_log WHERE seq = ?", (a,)).fetchone()
    rb = db.execute("SELECT record, prev_hash, hash FROM audit_log WHERE seq = ?", (b,)).fetchone()
    db.execute("UPDATE audit_log SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?", (*rb, a))
    db.execute("UPDATE audit_log SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?", (*ra, b))
    return {a}


def _forged_record(db, like_seq, new_seq):
    (rec,) = db.execute("SELECT record FROM audit_log WHERE seq = ?", (like_seq,)).fetchone()
    doc = json.loads(rec)
    if "seq" in doc:
        doc["seq"] = new_seq
    doc["statement"] = "SELECT 'nothing to see here'"
    doc["decision"] = "allow"
    return json.dumps(doc)


def _forge_middle(db, n):
    k = n // 2
    db.execute("UPDATE audit_log SET seq = -seq WHERE seq > ?", (k,))
    db.execute("UPDATE audit_log SET seq = -seq + 1 WHERE seq < 0")
    (prev,) = db.execute("SELECT hash FROM audit_log WHERE seq = ?", (k,)).fetchone()
    forged = _forged_record(db, k, k + 1)
    db.execute("INSERT INTO audit_log (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)",
               (k + 1, forged, prev, hashlib.sha256(forged.encode()).hexdigest()))
    return {k + 1}


def _forge_append(db, n):
    (prev,) = db.execute("SELECT hash FROM audit_log WHERE seq = ?", (n,)).fetchone()
    forged = _forged_record(db, n, n + 1)
    db.execute("INSERT INTO audit_log (seq, record, prev_hash, hash) VALUES (?, ?, ?, ?)",
               (n + 1, forged, prev, hashlib.sha256(forged.encode()).hexdigest()))
    return {n + 1}


@pytest.mark.parametrize("tamper", [_edit, _delete, _swap, _forge_middle, _forge_append],
                         ids=["edit-record", "delete-middle-row", "swap-two-rows", "forge-row-middle",
                              "forge-row-append"])
def test_verify_detects_tampering(gateway, records, tmp_path, tamper):
    db_path = backup_store(gateway, tmp_path / "tampered.db")
    db = sqlite3.connect(db_path)
    try:
        (lo, n) = db.execute("SELECT min(seq), max(seq) FROM audit_log").fetchone()
        assert lo == 1 and n >= 10, f"need a longer log to tamper with (seq {lo}..{n})"
        # the attacker has file access, so the append-only triggers are no obstacle
        db.execute("DROP TRIGGER IF EXISTS audit_no_update")
        db.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        expected = tamper(db, n)
        db.commit()
    finally:
        db.close()
    # an untouched copy must verify, or the failure below would prove nothing
    clean = backup_store(gateway, tmp_path / "clean.db")
    cli(gateway, "audit", "verify", config=copy_config(gateway, clean))
    cp = cli(gateway, "audit", "verify", config=copy_config(gateway, db_path), check=False)
    assert cp.returncode != 0, "verify accepted a tampered store:\n" + s.describe(cp)
    named = first_named_seq(cp)
    assert named in expected, f"verify should name seq {sorted(expected)}, named {named}:\n{s.describe(cp)}"

