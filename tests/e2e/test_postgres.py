"""querygate's PostgreSQL front against the machine's PostgreSQL (127.0.0.1:5432), through
real clients: psql (simple queries, its catalog queries), psycopg 3 (parameters over the
extended protocol, binary results, prepared statements, server-side cursors, cancel) and
asyncpg (prepared statements). The client signs in with its querygate credential as the
password; querygate holds the database's own credential.

Each test module makes its own database and role (qg_<random>, dropped after) and starts
`querygate serve` with a `postgres` source and `server.postgres_listen`.
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest

import e2e_support as s

pytestmark = pytest.mark.gateway_only

ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"

CONFIG = """
[server]
bigquery_listen = "127.0.0.1:{port}"
postgres_listen = "127.0.0.1:{pg_port}"
mcp_listen = "127.0.0.1:{mcp_port}"
admin_listen = "127.0.0.1:{admin_port}"

[approvals]
wire_wait = "8s"

[store]
path = "querygate.db"

{keys}
[budgets]
# PostgreSQL bills no bytes: the byte budget does not hold there, the row budget does.
"identity:agent:pg-budget" = ["1 KiB", "1500 rows"]

[[sources]]
name = "app"
kind = "postgres"
project = "{db}"
url = "postgresql://{role}@127.0.0.1:5432/{db}"
password_env = "QG_TEST_DB_PASSWORD"
tls = "prefer"
detect = ["email"]

[[classify]]
tag = "ssn"
columns = ["{db}.public.customers.ssn"]

[[mask]]
tag = "ssn"
strategy = "last4"
unmasked_for = ["group:people"]

[[classify]]
tag = "name"
columns = ["{db}.public.customers.name"]

[[mask]]
tag = "name"
strategy = "hash"
unmasked_for = ["group:people"]

[[rule]]
name = "no hr for agents"
who = ["group:agents"]
tables = ["*.hr.*"]
action = "deny"
message = "agents do not read HR data"

[[rule]]
name = "agents never write"
who = ["group:agents"]
statements = ["insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "set"]
action = "deny"
message = "agents have read-only access; ask a person to run this change"

[[rule]]
name = "payments need an approver"
who = ["group:agents"]
tables = ["*.public.payments"]
action = "approve"
approvers = ["group:approvers"]
message = "reads of payments need an approver"

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select", "copy"]
action = "allow"

[[rule]]
name = "people do everything else"
who = ["group:people"]
action = "allow"
"""


def admin(sql: str, dbname: str = "postgres") -> None:
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"), autocommit=True) as c:
        c.execute(sql)


@pytest.fixture(scope="module")
def gateway(e2e_tmp):
    work = e2e_tmp / "postgres"
    work.mkdir(parents=True)
    name = "qg_" + secrets.token_hex(4)
    password = secrets.token_urlsafe(16)
    admin(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    admin(f"CREATE DATABASE {name} OWNER {name}")
    setup = f"""
        SET ROLE {name};
        CREATE SCHEMA hr;
        CREATE TABLE public.customers (id int PRIMARY KEY, name varchar(20), email text, ssn text);
        INSERT INTO public.customers VALUES (1, 'Ana Lima', 'ana@example.com', '123-45-6789'),
                                            (2, 'Bo Chen', NULL, NULL);
        CREATE TABLE public.payments (id int, amount numeric);
        INSERT INTO public.payments VALUES (1, 9.5);
        CREATE TABLE public.contacts (id int PRIMARY KEY, email text);
        INSERT INTO public.contacts VALUES (1, 'ana@example.com'), (2, 'bo@example.org');
        CREATE TABLE hr.people (id int, salary int);
        INSERT INTO hr.people VALUES (1, 100);
        CREATE TABLE public.numbers AS SELECT g AS n FROM generate_series(1, 1000) g;
    """
    admin(setup, dbname=name)
    keys = {"agent": "qg_pg_agent_" + secrets.token_urlsafe(16),
            "person": "qg_pg_person_" + secrets.token_urlsafe(16),
            "approver": "qg_pg_approver_" + secrets.token_urlsafe(16),
            "budget": "qg_pg_budget_" + secrets.token_urlsafe(16)}
    key_toml = (s.api_key_toml("agent:pg-test", ["agents"], s.sha256_hex(keys["agent"]))
                + s.api_key_toml("human:dba", ["people"], s.sha256_hex(keys["person"]))
                + s.api_key_toml("human:approver", ["approvers"], s.sha256_hex(keys["approver"]))
                + s.api_key_toml("agent:pg-budget", ["agents"], s.sha256_hex(keys["budget"])))
    port, pg_port, admin_port, mcp_port = s.free_port(), s.free_port(), s.free_port(), s.free_port()
    config = work / "querygate.toml"
    config.write_text(CONFIG.format(port=port, pg_port=pg_port, admin_port=admin_port, mcp_port=mcp_port, keys=key_toml,
                                    db=name, role=name))
    env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1", QG_TEST_DB_PASSWORD=password)
    server = s.Server(name="querygate-pg", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=env, cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        yield {"port": pg_port, "db": name, "keys": keys, "config": config, "server": server,
               "url": f"http://127.0.0.1:{mcp_port}/mcp",
               "admin": f"http://127.0.0.1:{admin_port}"}
    finally:
        server.stop()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin(f"DROP ROLE IF EXISTS {name}")


def dsn(gw, who: str = "agent", **extra) -> str:
    parts = {"host": "127.0.0.1", "port": gw["port"], "dbname": gw["db"], "user": who,
             "password": gw["keys"][who], "sslmode": "disable", **extra}
    return " ".join(f"{k}={v}" for k, v in parts.items())


def audit(gw) -> list[dict]:
    cp = s.run_cli(s.default_gateway_bin(), "audit", "tail", "--config", str(gw["config"]), "--json", "-n", "5000")
    assert cp.returncode == 0, s.describe(cp)
    return [json.loads(line) for line in cp.stdout.splitlines() if line.startswith("{")]


def psql(gw, *commands: str, who: str = "agent") -> subprocess.CompletedProcess:
    args = ["psql", "-X", "--no-psqlrc", "-v", "ON_ERROR_STOP=0", f"host=127.0.0.1 port={gw['port']} dbname={gw['db']} user={who}"]
    for c in commands:
        args += ["-c", c]
    env = dict(os.environ, PGPASSWORD=gw["keys"][who], PGCONNECT_TIMEOUT="10")
    return subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)


def test_psql_reads_through_the_gateway_and_is_refused_what_the_rules_refuse(gateway):
    gw = gateway
    cp = psql(gw, "SELECT id, ssn FROM customers ORDER BY id", "SELECT * FROM hr.people",
              "DELETE FROM contacts", "SELECT 1 AS one; SELECT 2 AS two", "\\dt")
    assert "*******6789" in cp.stdout and "123-45" not in cp.stdout, s.describe(cp)
    assert 'rule "no hr for agents": agents do not read HR data' in cp.stderr, s.describe(cp)
    assert "agents have read-only access" in cp.stderr
    assert "one" in cp.stdout and "two" in cp.stdout
    # psql's catalog query lists the tables.
    assert "customers" in cp.stdout and "numbers" in cp.stdout
    # The refused statements never reached the database.
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={gw['db']}")) as c:
        assert c.execute("SELECT count(*) FROM contacts").fetchone()[0] == 2


def test_detectors_mask_values_in_every_result(gateway):
    cp = psql(gateway, "SELECT email FROM contacts WHERE id = 1")
    assert "ana@example.com" not in cp.stdout and "[REDACTED]" in cp.stdout, s.describe(cp)
    with psycopg.connect(dsn(gateway)) as c:
        rows = c.execute("SELECT email FROM contacts WHERE id = %s", (1,), binary=True).fetchall()
        assert rows == [("[REDACTED]",)]


def test_psycopg_parameters_binary_prepared_and_cursors(gateway):
    with psycopg.connect(dsn(gateway)) as c:
        assert c.execute("SELECT id FROM contacts WHERE id = %s", (2,)).fetchone() == (2,)
        assert c.execute("SELECT n FROM numbers WHERE n <= %s ORDER BY n", (3,), binary=True).fetchall() == [(1,), (2,), (3,)]
        for _ in range(3):  # prepared on the server after the first runs
            assert c.execute("SELECT count(*) FROM numbers WHERE n > %s", (990,), prepare=True).fetchone() == (10,)
        with c.cursor(name="pages") as cur:
            cur.execute("SELECT n FROM numbers ORDER BY n")
            assert cur.fetchmany(5) == [(1,), (2,), (3,), (4,), (5,)]
            assert len(cur.fetchall()) == 995
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            c.execute("SELECT salary FROM hr.people WHERE id = %s", (1,))
        assert denied.value.sqlstate == "42501"
        assert "agents do not read HR data" in str(denied.value)
        c.rollback()
        # The connection is usable after a refusal.
        assert c.execute("SELECT 40 + %s", (2,)).fetchone() == (42,)


def test_transactions_commit_and_roll_back_upstream(gateway):
    with psycopg.connect(dsn(gateway, "person")) as c:
        c.execute("INSERT INTO contacts VALUES (%s, %s)", (3, None))
        c.rollback()
        assert c.execute("SELECT count(*) FROM contacts WHERE id = 3").fetchone() == (0,)
        c.execute("INSERT INTO contacts VALUES (%s, %s)", (4, None))
        c.commit()
        assert c.execute("SELECT count(*) FROM contacts WHERE id = 4").fetchone() == (1,)
        c.execute("DELETE FROM contacts WHERE id = 4")
        c.commit()


def test_asyncpg_prepared_statements(gateway):
    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gateway["port"], database=gateway["db"],
                                     user="agent", password=gateway["keys"]["agent"], ssl=False)
        try:
            stmt = await conn.prepare("SELECT n FROM numbers WHERE n BETWEEN $1 AND $2 ORDER BY n")
            assert [r["n"] for r in await stmt.fetch(10, 12)] == [10, 11, 12]
            assert await conn.fetchval("SELECT id FROM contacts WHERE id = $1", 1) == 1
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetch("SELECT * FROM hr.people")
            assert await conn.fetchval("SELECT 7") == 7
        finally:
            await conn.close()
    asyncio.run(main())


def test_every_statement_is_audited_with_who_and_what(gateway):
    with psycopg.connect(dsn(gateway)) as c:
        c.execute("SELECT id FROM contacts WHERE id = %s /* audit-marker */", (1,))
    psql(gateway, "SELECT 'simple-marker'")
    records = audit(gateway)
    extended = [r for r in records if "audit-marker" in (r.get("statement") or "")]
    assert {r["phase"] for r in extended} == {"decided", "completed"}, extended
    assert all(r["identity"] == "agent:pg-test" and r["method"] == "execute" for r in extended)
    done = next(r for r in extended if r["phase"] == "completed")
    assert done["rows"] == 1 and done["source"] == "app"
    simple = [r for r in records if "simple-marker" in (r.get("statement") or "")]
    assert {r["method"] for r in simple} == {"query"}
    denied = [r for r in records if r["decision"] == "deny" and "hr.people" in (r.get("statement") or "")]
    assert denied and all(r["phase"] == "decided" for r in denied)
    cp = s.run_cli(s.default_gateway_bin(), "audit", "verify", "--config", str(gateway["config"]))
    assert cp.returncode == 0, s.describe(cp)


def test_sign_in_is_refused_clearly_and_audited(gateway):
    with pytest.raises(psycopg.OperationalError) as bad:
        psycopg.connect(dsn(gateway).replace(gateway["keys"]["agent"], "not-a-key"))
    assert "not a querygate API key" in str(bad.value)
    with pytest.raises(psycopg.OperationalError) as nodb:
        psycopg.connect(dsn(gateway, dbname="elsewhere"))
    assert 'database "elsewhere" is not served by querygate' in str(nodb.value)
    with pytest.raises(psycopg.OperationalError) as options:
        psycopg.connect(dsn(gateway, options="'-c role=postgres'"))
    assert "does not forward the startup parameter \"options\"" in str(options.value)
    refused = [r for r in audit(gateway) if r["method"] == "connect"]
    assert any(r["identity"] == "unauthenticated" and r["decision"] == "deny" for r in refused), refused


def test_cancel_reaches_the_running_statement(gateway):
    with psycopg.connect(dsn(gateway)) as c:
        timer = threading.Timer(0.5, c.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT count(*) FROM generate_series(1, 2000000000)")
        assert time.monotonic() - started < 10
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)


def raw_session(gateway, who: str = "agent"):
    """A socket signed in as `who`, past its first ReadyForQuery."""
    sock = socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10)
    params = b"user\0" + who.encode() + b"\0database\0" + gateway["db"].encode() + b"\0\0"
    sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    assert sock.recv(1) == b"R"
    sock.recv(8)
    password = gateway["keys"][who].encode() + b"\0"
    sock.sendall(b"p" + struct.pack("!i", 4 + len(password)) + password)
    seen = b""
    while not seen.endswith(b"Z\0\0\0\x05I"):
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    return sock


def read_all(sock) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        out += chunk
    return out


def test_garbage_and_oversized_messages_end_the_connection_clearly(gateway):
    # Before the startup: bytes that are no startup packet.
    sock = socket.create_connection(("127.0.0.1", gateway["port"]), timeout=10)
    sock.sendall(b"\x00\x00\x00\x10GET / HTTP/1.1\r\n")
    assert b"08P01" in read_all(sock)
    # After it: a message type the protocol does not have.
    sock = raw_session(gateway)
    sock.sendall(b"?\x00\x00\x00\x04")
    answer = read_all(sock)
    assert b"FATAL" in answer and b"08P01" in answer, answer
    # A Query that is not UTF-8 is not analyzed one way and run another.
    sock = raw_session(gateway)
    body = b"SELECT '\xff'\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
    assert b"not UTF-8" in read_all(sock)
    # A message declaring more than the gateway accepts is refused before it is read.
    sock = raw_session(gateway)
    sock.sendall(b"Q" + struct.pack("!i", 0x7fffff00))
    assert b"54000" in read_all(sock)
    # A Bind too short for what it declares.
    sock = raw_session(gateway)
    sock.sendall(b"B\x00\x00\x00\x06\x00\x00")
    assert b"08P01" in read_all(sock)
    assert gateway["server"].alive()
    malformed = [r for r in audit(gateway) if r["method"] == "malformed"]
    assert len(malformed) >= 4, malformed
    # The gateway still serves.
    with psycopg.connect(dsn(gateway)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def mask_key(gateway) -> bytes:
    return (gateway["config"].parent / "querygate.db.maskkey").read_bytes()


def test_masked_columns_come_back_masked_for_agents_and_clear_for_people(gateway):
    import hashlib
    want = hashlib.sha256(mask_key(gateway) + b"Ana Lima").hexdigest()
    bo = hashlib.sha256(mask_key(gateway) + b"Bo Chen").hexdigest()
    cp = psql(gateway, "SELECT id, name, ssn FROM customers ORDER BY id")
    assert want in cp.stdout and "*******6789" in cp.stdout, s.describe(cp)
    assert "Ana Lima" not in cp.stdout and "123-45" not in cp.stdout
    # NULLs stay NULL, and the type is the column's (psycopg reads varchar as str).
    with psycopg.connect(dsn(gateway)) as c:
        rows = c.execute("SELECT name, ssn FROM customers ORDER BY id").fetchall()
        assert rows == [(want, "*******6789"), (bo, None)]
    cp = psql(gateway, "SELECT name, ssn FROM customers ORDER BY id", who="person")
    assert "Ana Lima" in cp.stdout and "123-45-6789" in cp.stdout, s.describe(cp)


BYPASSES = [
    "SELECT c.* FROM customers c",
    "SELECT * FROM public.\"customers\"",
    "SELECT (SELECT ssn FROM customers WHERE id = 1)",
    "WITH x AS (SELECT * FROM customers) SELECT * FROM x",
    "SELECT row_to_json(c) FROM customers c",
    "SELECT upper(ssn), lower(name) FROM customers",
    "SELECT string_agg(ssn, ',') FROM customers",
    "SELECT ssn FROM customers UNION ALL SELECT name FROM customers",
    "SELECT * FROM (SELECT ssn AS x FROM customers) t",
    "SELECT json_agg(t) FROM (SELECT * FROM customers) t",
    "SELECT ssn FROM ONLY customers",
    "SELECT 1; SELECT ssn FROM customers",
    "COPY customers TO STDOUT",
    "COPY customers (ssn, name) TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT ssn, name FROM customers) TO STDOUT",
    "COPY (SELECT * FROM customers) TO STDOUT",
    "SELECT most_common_vals::text FROM pg_stats WHERE tablename = 'customers'",
    "SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE attname = 'ssn'",
    "SELECT query FROM pg_stat_activity",
    # Names the server decodes differently from how they are written, and settings built
    # at run time, are refused rather than read one way and run another.
    "SELECT ssn FROM U&\"\\0063ustomers\"",
    "SELECT set_config('search' || '_path', 'pg_temp, public', false); SELECT ssn FROM customers",
]


@pytest.mark.parametrize("sql", BYPASSES)
def test_masking_bypasses_leak_nothing(gateway, sql):
    if "pg_stat" in sql:
        # Statistics hold the values: make sure there are some to leak.
        admin("ANALYZE customers", dbname=gateway["db"])
    cp = psql(gateway, sql)
    assert gateway["server"].alive()
    if "pg_stat" in sql:
        assert "holds values of other tables" in cp.stderr, s.describe(cp)
    for secret in ("123-45-6789", "123-45", "Ana Lima", "ana lima", "ANA LIMA"):
        assert secret not in cp.stdout + cp.stderr, s.describe(cp)


def test_statements_that_differ_only_in_a_compared_number_are_decided_as_the_server_reads_them(gateway):
    # One analysis serves statements that differ only in the numbers they compare against
    # (analysis by shape). What else differs is decided anew: an ordinal that names the
    # masked column, a comment that hides text, a number inside a string.
    allowed = psql(gateway, "SELECT id, ssn FROM customers WHERE id = 1 ORDER BY 1")
    assert allowed.returncode == 0 and "*******6789" in allowed.stdout, s.describe(allowed)
    again = psql(gateway, "SELECT id, ssn FROM customers WHERE id = 2 ORDER BY 1")
    assert again.returncode == 0 and "123-45" not in again.stdout, s.describe(again)
    for sql in ["SELECT id, ssn FROM customers WHERE id = 1 ORDER BY 2",
                "SELECT id, ssn FROM customers WHERE id = 1 /* = 2 */ ORDER BY 2",
                "SELECT id, ssn FROM customers WHERE id = 1 -- = 2\nORDER BY 2"]:
        cp = psql(gateway, sql)
        assert "ERROR" in cp.stderr and "123-45" not in cp.stdout + cp.stderr, s.describe(cp)
    quoted = psql(gateway, "SELECT id, ssn FROM customers WHERE ssn <> 'x = 5' AND id = 1")
    assert "ERROR" in quoted.stderr and "123-45" not in quoted.stdout + quoted.stderr, s.describe(quoted)
    assert gateway["server"].alive()


def test_masked_reads_through_the_extended_protocol_are_masked_too(gateway):
    import hashlib
    ana = hashlib.sha256(mask_key(gateway) + b"Ana Lima").hexdigest()
    with psycopg.connect(dsn(gateway)) as c:
        # Parameters of its own: the key is bound past them.
        row = c.execute("SELECT name, ssn FROM customers WHERE id = %s", (1,)).fetchone()
        assert row == (ana, "*******6789")
        row = c.execute("SELECT name, ssn FROM customers WHERE id = %s", (1,), binary=True).fetchone()
        assert row == (ana, "*******6789")
        for _ in range(3):  # server-side prepared after the first runs
            row = c.execute("SELECT name FROM customers WHERE id = %s AND id < %s", (1, 5), prepare=True).fetchone()
            assert row == (ana,)
        with c.cursor(name="masked") as cur:
            cur.execute("SELECT ssn FROM customers ORDER BY id")
            assert cur.fetchall() == [("*******6789",), (None,)]

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=gateway["port"], database=gateway["db"],
                                     user="agent", password=gateway["keys"]["agent"], ssl=False)
        try:
            # asyncpg describes the statement: it must see its own parameters only.
            stmt = await conn.prepare("SELECT name, ssn FROM customers WHERE id = $1")
            assert len(stmt.get_parameters()) == 1
            assert [tuple(r) for r in await stmt.fetch(1)] == [(ana, "*******6789")]
            assert await conn.fetchval("SELECT ssn FROM customers WHERE id = $1", 1) == "*******6789"
        finally:
            await conn.close()
    asyncio.run(main())
    # People see the values.
    with psycopg.connect(dsn(gateway, "person")) as c:
        assert c.execute("SELECT name FROM customers WHERE id = %s", (1,)).fetchone() == ("Ana Lima",)


def test_search_path_cannot_move_under_the_gateway(gateway):
    # Even for someone every statement is allowed for: names would resolve two ways.
    cp = psql(gateway, "SET search_path = hr, public", "SELECT set_config('search_path', 'hr', false)",
              "SELECT current_setting('search_path')", who="person")
    assert cp.stderr.count("does not let a session change search_path") == 1, s.describe(cp)
    assert "does not forward set_config()" in cp.stderr, s.describe(cp)
    assert " public" in cp.stdout
    refused = [r for r in audit(gateway) if r.get("statement") == "SET search_path = hr, public"]
    assert refused and refused[0]["decision"] == "deny" and refused[0]["identity"] == "human:dba", refused
    # A schema named at startup is where one-part names resolve (and rules see them).
    params = dict(host="127.0.0.1", port=gateway["port"], dbname=gateway["db"], user="agent",
                  password=gateway["keys"]["agent"], sslmode="disable")
    async def main():
        conn = await asyncpg.connect(**{k: v for k, v in params.items() if k not in ("dbname", "sslmode")},
                                     database=gateway["db"], ssl=False, server_settings={"search_path": "hr"})
        try:
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError) as denied:
                await conn.fetch("SELECT * FROM people")
            assert "agents do not read HR data" in str(denied.value)
        finally:
            await conn.close()
    asyncio.run(main())


def tickets(text: str) -> list[dict]:
    data = json.loads(text)
    return data if isinstance(data, list) else data.get("tickets", [])


def pending_ticket(gateway, statement: str, timeout: float = 10) -> str:
    env = dict(os.environ, QUERYGATE_TOKEN=gateway["keys"]["approver"], NO_COLOR="1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = subprocess.run([str(s.default_gateway_bin()), "approvals", "list", "--json", "--server", gateway["admin"]],
                            capture_output=True, text=True, env=env, timeout=30)
        assert cp.returncode == 0, s.describe(cp)
        for t in tickets(cp.stdout):
            if t.get("statement") == statement and t.get("state") == "pending":
                return t["id"]
        time.sleep(0.2)
    raise AssertionError(f"no pending ticket for {statement!r}")


def decide(gateway, ticket: str, verb: str) -> None:
    env = dict(os.environ, QUERYGATE_TOKEN=gateway["keys"]["approver"], NO_COLOR="1")
    cp = subprocess.run([str(s.default_gateway_bin()), "approvals", verb, ticket, "--reason", "e2e",
                         "--server", gateway["admin"]], capture_output=True, text=True, env=env, timeout=30)
    assert cp.returncode == 0, s.describe(cp)


def test_an_approved_statement_runs_while_the_client_waits(gateway):
    sql = "SELECT amount FROM payments WHERE id = 1"
    notices = []
    result = {}

    def client():
        with psycopg.connect(dsn(gateway)) as c:
            c.add_notice_handler(lambda d: notices.append(d.message_primary))
            result["rows"] = c.execute(sql).fetchall()

    t = threading.Thread(target=client)
    t.start()
    ticket = pending_ticket(gateway, sql)
    decide(gateway, ticket, "approve")
    t.join(20)
    assert result.get("rows") == [(__import__("decimal").Decimal("9.5"),)], result
    assert any(ticket in n and "group:approvers" in n for n in notices), notices


def test_a_denied_or_undecided_statement_answers_with_its_ticket(gateway):
    sql = "SELECT amount FROM payments WHERE id < 5"
    errors = {}

    def client():
        with psycopg.connect(dsn(gateway)) as c:
            try:
                c.execute(sql)
            except psycopg.Error as e:
                errors["denied"] = (e.sqlstate, str(e))

    t = threading.Thread(target=client)
    t.start()
    ticket = pending_ticket(gateway, sql)
    decide(gateway, ticket, "deny")
    t.join(20)
    assert errors["denied"][0] == "42501" and ticket in errors["denied"][1] and "denied" in errors["denied"][1]
    # Nobody decides within wire_wait: the answer names the ticket; after the approval,
    # the same statement runs once.
    sql = "SELECT count(*) FROM payments"
    with psycopg.connect(dsn(gateway)) as c:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as waited:
            c.execute(sql)
        assert 7 <= time.monotonic() - started < 20
        ticket = pending_ticket(gateway, sql)
        assert ticket in str(waited.value) and "run the same statement again" in str(waited.value)
        c.rollback()
        decide(gateway, ticket, "approve")
        assert c.execute(sql).fetchone() == (1,)


def test_cancel_while_waiting_withdraws_the_ticket(gateway):
    sql = "SELECT id FROM payments"
    with psycopg.connect(dsn(gateway)) as c:
        timer = threading.Timer(1.0, c.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as cancelled:
            c.execute(sql)
        assert time.monotonic() - started < 6
        assert "withdrawn" in str(cancelled.value)
    env = dict(os.environ, QUERYGATE_TOKEN=gateway["keys"]["approver"], NO_COLOR="1")
    cp = subprocess.run([str(s.default_gateway_bin()), "approvals", "list", "--json", "--state", "cancelled",
                         "--server", gateway["admin"]], capture_output=True, text=True, env=env, timeout=30)
    assert any(t["statement"] == sql for t in tickets(cp.stdout)), s.describe(cp)


def test_node_postgres_parameters_cursors_and_denials(gateway):
    cp = subprocess.run(["node", str(s.HERE / "pg-node" / "drive.mjs"), str(gateway["port"]), gateway["db"],
                         gateway["keys"]["agent"]], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, s.describe(cp)
    out = json.loads(cp.stdout.strip().splitlines()[-1])
    assert out["param"] == [{"n": 5}, {"n": 6}, {"n": 7}]
    assert out["masked"] == [{"ssn": "*******6789"}]
    assert out["pages"] == [[1, 2, 3], [4, 5]]
    assert out["denied"]["code"] == "42501" and "agents do not read HR data" in out["denied"]["message"]
    assert out["after"] == [{"one": 1}]


JDBC_JAR = "/usr/share/java/postgresql.jar"


@pytest.mark.skipif(not os.path.exists(JDBC_JAR),
                    reason="Debian's libpostgresql-jdbc-java is not installed (tests/e2e/setup.sh installs it as root)")
def test_jdbc_metadata_prepared_statements_and_denials(gateway):
    cp = subprocess.run(["java", "-cp", JDBC_JAR, str(s.HERE / "PgJdbc.java"), str(gateway["port"]), gateway["db"],
                         gateway["keys"]["agent"]], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, s.describe(cp)
    lines = dict(line.split("=", 1) for line in cp.stdout.splitlines() if "=" in line)
    assert "customers" in lines["tables"] and "contacts" in lines["tables"], cp.stdout
    assert lines["columns"].startswith("id,name,email,ssn"), cp.stdout
    assert cp.stdout.count("ssn=*******6789") == 3, cp.stdout
    assert lines["denied"].startswith("42501") and "agents do not read HR data" in lines["denied"], cp.stdout


def test_sqlalchemy_reflects_and_queries(gateway):
    from sqlalchemy import create_engine, inspect, text
    url = (f"postgresql+psycopg://agent:{gateway['keys']['agent']}@127.0.0.1:{gateway['port']}/{gateway['db']}"
           "?sslmode=disable")
    engine = create_engine(url)
    try:
        reflected = inspect(engine)
        assert {"customers", "contacts", "numbers"} <= set(reflected.get_table_names())
        assert [c["name"] for c in reflected.get_columns("customers")] == ["id", "name", "email", "ssn"]
        assert reflected.get_pk_constraint("customers")["constrained_columns"] == ["id"]
        with engine.connect() as c:
            assert c.execute(text("SELECT ssn FROM customers WHERE id = :i"), {"i": 1}).scalar() == "*******6789"
    finally:
        engine.dispose()


def test_policy_check_decides_postgres_statements_as_the_front_does(gateway):
    check = lambda *args: s.run_cli(s.default_gateway_bin(), "policy", "check", "--config", str(gateway["config"]),
                                    "--source", "app", "--as", "agent:pg-test", "--groups", "agents", *args)
    cp = check("--sql", "SELECT * FROM hr.people")
    assert cp.returncode != 0 or "deny" in cp.stdout, s.describe(cp)
    assert "no hr for agents" in cp.stdout, s.describe(cp)
    cp = check("--sql", "SELECT ssn FROM customers WHERE id = $1",
               "--columns", f"{gateway['db']}.public.customers=id:integer,name:varchar,email:text,ssn:text")
    assert "decision:   allow" in cp.stdout and "pg_catalog.repeat" in cp.stdout, s.describe(cp)



def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", 4 + len(body)) + body


def test_a_second_statement_of_a_name_is_refused_as_the_server_refuses_it(gateway):
    # The server keeps the first statement of a name and refuses the second: were the
    # gateway to take the second's text, an Execute would be decided on one statement and
    # run another (here: an unmasked-looking read decided, the payments read run).
    sock = raw_session(gateway)
    sync = message(b"S", b"")
    sock.sendall(message(b"P", b"s1\0SELECT amount FROM payments\0\0\0") + sync)
    first = b""
    while not first.endswith(b"Z\0\0\0\x05I"):
        first += sock.recv(4096)
    assert first.startswith(b"1"), first
    sock.sendall(message(b"P", b"s1\0SELECT 1\0\0\0") + sync)
    second = b""
    while not second.endswith(b"Z\0\0\0\x05I"):
        second += sock.recv(4096)
    assert b"42P05" in second and b"already exists" in second, second
    sock.close()


def test_a_large_result_streams_whole_scrubbed_and_audited(gateway):
    """A result far larger than the gateway holds at once (256 KiB) streams to the client:
    every row arrives, values found late in it are scrubbed like early ones, and the
    completed record counts them all."""
    sql = ("SELECT n, CASE WHEN n % 100000 = 0 THEN 'late' || n || '@example.com' "
           "ELSE 'v' || n END AS v FROM generate_series(1, 300000) n /* stream-marker */")
    with psycopg.connect(dsn(gateway)) as c:
        for binary in (False, True):
            rows = c.execute(sql, binary=binary).fetchall()
            assert len(rows) == 300000 and rows[-1] == (300000, "[REDACTED]"), rows[-1]
            assert [v for _, v in rows if "@" in v] == []
    cp = psql(gateway, sql.replace("stream-marker", "stream-simple"))
    assert "(300000 rows)" in cp.stdout and "late300000@example.com" not in cp.stdout, s.describe(cp)
    done = [r for r in audit(gateway) if r["phase"] == "completed"
            and "stream-" in (r.get("statement") or "")]
    assert len(done) == 3 and all(r["rows"] == 300000 and r["masked"] == 3 for r in done), done


def test_an_error_late_in_a_streamed_result_keeps_its_text_withheld(gateway):
    # Reads a masked column: an error could echo it, and it comes after 256 KiB of rows.
    with psycopg.connect(dsn(gateway)) as c:
        with pytest.raises(psycopg.errors.DivisionByZero) as failed:
            c.execute("SELECT ssn, 1 / (n - 100000) FROM customers, generate_series(1, 100000) n "
                      "WHERE id = 1").fetchall()
        assert "its message is withheld" in str(failed.value), failed.value
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_a_client_that_leaves_mid_result_is_audited_and_the_gateway_serves_on(gateway):
    sock = raw_session(gateway)
    body = b"SELECT repeat('x', 100) FROM generate_series(1, 2000000) /* leave-marker */\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
    got = 0
    while got < 1 << 20:
        got += len(sock.recv(65536))
    sock.close()
    deadline = time.monotonic() + 20
    while True:
        done = [r for r in audit(gateway) if r["phase"] == "completed"
                and "leave-marker" in (r.get("statement") or "")]
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert done and "not read to its end" in done[0]["error"], done
    assert done[0]["rows"] < 2000000
    with psycopg.connect(dsn(gateway)) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)


def test_copy_from_stdin_is_a_write_the_rules_decide(gateway):
    # A person loads rows with COPY over the extended protocol (psycopg) and the simple one (psql).
    with psycopg.connect(dsn(gateway, "person")) as c:
        with c.cursor() as cur:
            with cur.copy("COPY contacts (id, email) FROM STDIN /* copy-marker */") as copy:
                for i in range(100, 150):
                    copy.write_row((i, f"user{i}@example.net"))
        c.commit()
        # Data the server refuses: its error, and the session goes on.
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with c.cursor() as cur:
                with cur.copy("COPY contacts (id) FROM STDIN /* copy-bad */") as copy:
                    copy.write(b"not-a-number\n")
        c.rollback()
        # A client that gives up mid-COPY (psycopg sends CopyFail and re-raises): nothing is
        # loaded, and the session goes on.
        with pytest.raises(RuntimeError):
            with c.cursor() as cur:
                with cur.copy("COPY contacts (id) FROM STDIN") as copy:
                    copy.write_row((999,))
                    raise RuntimeError("changed my mind")
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)
    cp = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", f"host=127.0.0.1 port={gateway['port']} dbname={gateway['db']} user=person",
         "-c", "\\copy contacts (id, email) FROM STDIN"],
        input="200\tpsql@example.net\n201\t\\N\n", capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PGPASSWORD=gateway["keys"]["person"]))
    assert cp.returncode == 0 and "COPY 2" in cp.stdout, s.describe(cp)
    # An agent may not write: COPY … FROM is an insert to the rules.
    with psycopg.connect(dsn(gateway)) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            with c.cursor() as cur:
                with cur.copy("COPY contacts (id) FROM STDIN") as copy:
                    copy.write_row((300,))
        assert "agents have read-only access" in str(denied.value)
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={gateway['db']}"), autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM contacts WHERE id >= 100").fetchone() == (52,)
        assert c.execute("SELECT count(*) FROM contacts WHERE id IN (300, 999)").fetchone() == (0,)
        c.execute("DELETE FROM contacts WHERE id >= 100")
    records = audit(gateway)
    done = next(r for r in records if r["phase"] == "completed" and "copy-marker" in (r.get("statement") or ""))
    assert done["rows"] == 50 and done["sqlstate"] == "00000" and done["statement_kinds"] == ["insert"], done
    bad = next(r for r in records if r["phase"] == "completed" and "copy-bad" in (r.get("statement") or ""))
    assert bad["sqlstate"] == "22P02", bad


def test_mcp_tools_reach_postgres_decided_and_masked(gateway):
    db = gateway["db"]
    out = s.mcp_drive(gateway, "agent", [
        ["list_dataset_ids", {"project": db}],
        ["list_table_ids", {"project": db, "dataset_id": "public"}],
        ["get_table_info", {"project": db, "dataset_id": "public", "table_id": "customers"}],
        ["execute_sql", {"project": db, "sql": "SELECT id, name, ssn FROM customers ORDER BY id"}],
        ["execute_sql", {"project": db, "sql": "SELECT * FROM hr.people"}],
        ["execute_sql", {"project": db, "sql": "SELECT n FROM numbers ORDER BY n", "max_rows": 5}],
        ["execute_sql", {"project": db, "sql": "SELECT email FROM contacts WHERE id = 1"}],
        ["execute_sql", {"project": db, "sql": "SELECT $1"}],
        ["execute_sql", {"project": db, "sql": "SELECT ssn FROM customers", "dry_run": True}],
    ])
    datasets, tables, info, customers, hr, numbers, contacts, parameter, dry = out["results"]
    # The catalog shows what the rules let the agent read ("hr" is denied), and how it is masked.
    assert datasets["structured"]["dataset_ids"] == ["public"], datasets
    assert tables["structured"]["table_ids"] == ["contacts", "customers", "numbers", "payments"]
    masks = {c["name"]: c.get("mask") for c in info["structured"]["schema"]}
    assert masks == {"id": None, "name": "hash", "email": None, "ssn": "last4"}, info
    # Rows come back masked where the column is read, typed by their PostgreSQL types.
    import hashlib
    ana = hashlib.sha256(mask_key(gateway) + b"Ana Lima").hexdigest()
    assert customers["structured"]["rows"] == [{"id": 1, "name": ana, "ssn": "*******6789"},
                                               {"id": 2, "name": customers["structured"]["rows"][1]["name"], "ssn": None}]
    assert "Ana Lima" not in json.dumps(customers) and "123-45" not in json.dumps(customers)
    assert hr["is_error"] and "agents do not read HR data" in hr["texts"][0], hr
    assert numbers["structured"]["rows"] == [{"n": i} for i in range(1, 6)], numbers
    assert contacts["structured"]["rows"] == [{"email": "[REDACTED]"}], contacts
    assert parameter["is_error"] and "none can be bound here" in parameter["texts"][0], parameter
    assert dry["structured"]["dry_run"] and dry["structured"]["schema"] == [{"name": "ssn", "type": "text"}], dry
    records = [r for r in audit(gateway) if r["method"] == "execute_sql" and r["source"] == "app"]
    done = [r for r in records if r["phase"] == "completed" and "FROM customers ORDER BY id" in (r.get("statement") or "")]
    assert done and done[0]["rows"] == 2 and done[0]["sqlstate"] == "00000", records
    assert "$1" in (done[0].get("rewritten") or ""), "the hash key is bound as a parameter, never in the text"


def test_mcp_on_postgres_a_statement_an_approve_rule_catches_runs_once_approved(gateway):
    db = gateway["db"]
    (held,) = s.mcp_drive(gateway, "agent", [["execute_sql", {"project": db, "sql": "SELECT amount FROM payments"}]])["results"]
    pending = held["structured"]
    assert pending["state"] == "PENDING" and pending["approvers"] == ["group:approvers"], held
    decide(gateway, pending["ticket"], "approve")
    (rows,) = s.mcp_drive(gateway, "agent", [["get_query_results", {"project": db, "job_id": pending["job_id"], "timeout_ms": 5000}]])["results"]
    assert not rows["is_error"] and rows["structured"]["rows"] == [{"amount": "9.5"}], rows


def test_an_approval_binds_the_values_a_statement_was_bound_with(gateway):
    sql = "SELECT amount FROM payments WHERE id = $1 /* bound */"
    errors = []

    def client(value):
        with psycopg.connect(dsn(gateway)) as c:
            try:
                c.execute(sql.replace("$1", "%s"), (value,))
            except psycopg.Error as e:
                errors.append(e.sqlstate)

    first = threading.Thread(target=client, args=(1,))
    first.start()
    one = pending_ticket(gateway, sql)
    second = threading.Thread(target=client, args=(2,))
    second.start()
    env = dict(os.environ, QUERYGATE_TOKEN=gateway["keys"]["approver"], NO_COLOR="1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cp = subprocess.run([str(s.default_gateway_bin()), "approvals", "list", "--json", "--server", gateway["admin"]],
                            capture_output=True, text=True, env=env, timeout=30)
        waiting = [t for t in tickets(cp.stdout) if t.get("statement") == sql and t.get("state") == "pending"]
        if len(waiting) == 2:
            break
        time.sleep(0.2)
    # Another value is another request: it waits for its own approval.
    assert len(waiting) == 2, waiting
    # The approver sees the values each would run with (psycopg binds ints as binary int2).
    shown = []
    for t in waiting:
        cp = subprocess.run([str(s.default_gateway_bin()), "approvals", "show", t["id"], "--server", gateway["admin"]],
                            capture_output=True, text=True, env=env, timeout=30)
        assert cp.returncode == 0, s.describe(cp)
        shown.append(next(line for line in cp.stdout.splitlines() if "parameters" in line))
    assert sorted(line.split()[-1] for line in shown) == ['["\\\\x0001"]', '["\\\\x0002"]'], shown
    for t in waiting:
        decide(gateway, t["id"], "deny")
    first.join(20)
    second.join(20)
    assert errors == ["42501", "42501"] and one in {t["id"] for t in waiting}
    # Approved while the client waits, the statement runs with the values it was bound with.
    result = {}

    def approved():
        with psycopg.connect(dsn(gateway)) as c:
            result["rows"] = c.execute(sql.replace("$1", "%s"), (1,)).fetchall()

    t = threading.Thread(target=approved)
    t.start()
    decide(gateway, pending_ticket(gateway, sql), "approve")
    t.join(20)
    assert result.get("rows") == [(__import__("decimal").Decimal("9.5"),)], result


def test_garbage_in_the_middle_of_a_copy_ends_the_connection_clearly_and_is_audited(gateway):
    sock = raw_session(gateway, "person")
    body = b"COPY contacts (id) FROM STDIN /* copy-garbage */\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(body)) + body)
    seen = b""
    while b"G" not in seen:
        seen += sock.recv(4096)
    sock.sendall(b"d" + struct.pack("!i", 4 + 4) + b"500\n" + b"Q\x00\x00\x00\x05\x00")
    answer = read_all(sock)
    assert b"FATAL" in answer and b"only CopyData" in answer, answer
    assert gateway["server"].alive()
    records = audit(gateway)
    assert any(r["method"] == "malformed" and "only CopyData" in (r.get("reason") or "") for r in records)
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={gateway['db']}")) as c:
        assert c.execute("SELECT count(*) FROM contacts WHERE id = 500").fetchone() == (0,)


def test_copy_from_stdin_over_the_extended_protocol_ends_at_the_clients_sync(gateway):
    # As libpq sends it: Parse/Bind/Execute/Sync, the data, CopyDone, then its own Sync (the
    # server ignores the first Sync while the COPY runs).
    sock = raw_session(gateway, "person")
    sql = b"COPY contacts (id) FROM STDIN\0"
    parse = b"P" + struct.pack("!i", 4 + 1 + len(sql) + 2) + b"\0" + sql + b"\0\0"
    bind = b"B" + struct.pack("!i", 4 + 1 + 1 + 2 + 2 + 2) + b"\0\0" + b"\0\0\0\0\0\0"
    execute = b"E" + struct.pack("!i", 4 + 1 + 4) + b"\0" + b"\0\0\0\0"
    sync = b"S\0\0\0\x04"
    sock.sendall(parse + bind + execute + sync)
    seen = b""
    while b"G" not in seen:
        seen += sock.recv(4096)
    sock.sendall(b"d" + struct.pack("!i", 4 + 4) + b"700\n" + b"c\0\0\0\x04" + sync)
    seen = b""
    while not seen.endswith(b"Z\0\0\0\x05I"):
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    assert b"COPY 1" in seen, seen
    # The session goes on.
    query = b"SELECT 1\0"
    sock.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
    seen = b""
    while not seen.endswith(b"Z\0\0\0\x05I"):
        seen += sock.recv(4096)
    assert b"SELECT 1" in seen
    with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={gateway['db']}"), autocommit=True) as c:
        assert c.execute("DELETE FROM contacts WHERE id = 700").rowcount == 1


def test_a_row_budget_limits_what_an_identity_reads_in_a_day(gateway):
    # 1000 of the 1500 rows: read whole (the 1 KiB byte budget does not hold on PostgreSQL).
    with psycopg.connect(dsn(gateway, "budget")) as c:
        assert len(c.execute("SELECT n FROM numbers").fetchall()) == 1000
        # 500 left: a result of 1000 rows is withheld whole, with what is left and why.
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("SELECT n FROM numbers")
        message = str(e.value)
        assert "more than 500 rows" in message and "daily budget of 1,500 rows" in message, message
        c.rollback()
        # What fits still runs, through the extended protocol too.
        assert len(c.execute("SELECT n FROM numbers WHERE n <= %s", (500,)).fetchall()) == 500
        # Spent: nothing more runs today.
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("SELECT 1")
        assert "is spent" in str(e.value) and "1,500 rows returned or changed today" in str(e.value), str(e.value)
    # Another identity of the same group has its own day.
    assert psql(gateway, "SELECT count(*) FROM numbers").returncode == 0
    records = [r for r in audit(gateway) if r.get("identity") == "agent:pg-budget"]
    completed = [r for r in records if r.get("phase") == "completed" and r["statement"].startswith("SELECT")]
    assert [r.get("rows") for r in completed if r.get("decision") == "allow"][:2] == [1000, 500], completed
    withheld = [r for r in completed if r.get("decision") == "deny"]
    assert withheld and "more than 500 rows" in withheld[0]["reason"], completed
    spent = [r for r in records if r.get("phase") == "decided" and "is spent" in (r.get("reason") or "")]
    assert spent and spent[0]["statement"] == "SELECT 1", records


def test_a_connection_is_a_recorded_session_that_replays_what_the_client_saw(gateway):
    q1 = "SELECT id, email FROM contacts WHERE id = %s"
    q2 = "SELECT count(*) FROM hr.people"
    q3 = "SELECT * FROM no_such_table"
    with psycopg.connect(dsn(gateway, "person"), autocommit=True) as c:
        rows = c.execute(q1, (2,)).fetchall()
        assert [r[0] for r in rows] == [2] and "bo@example.org" not in str(rows), rows
        assert c.execute(q2).fetchone() == (1,)
        with pytest.raises(psycopg.errors.UndefinedTable):
            c.execute(q3)

    def cli(*args) -> str:
        cp = s.run_cli(s.default_gateway_bin(), "sessions", *args, "--config", str(gateway["config"]))
        assert cp.returncode == 0, s.describe(cp)
        return cp.stdout

    # The recorder writes its segments within a quarter second: wait for the last answer.
    deadline = time.monotonic() + 10
    while True:
        listed = [json.loads(line) for line in cli("list", "--json", "--identity", "human:dba").splitlines()]
        docs = [json.loads(cli("show", x["id"], "--json")) for x in listed]
        doc = next((d for d in docs if any(e.get("statement") == q3 for e in d["events"])), None)
        if doc and doc["events"][-1]["type"] == "response":
            break
        assert time.monotonic() < deadline, f"the session never recorded the last statement: {listed}"
        time.sleep(0.2)
    events = doc["events"]
    assert doc["session"]["id"].startswith("pg-"), doc["session"]
    requests = [e for e in events if e["type"] == "request"]
    assert all(e["identity"] == "human:dba" for e in requests)
    # In the order the client sent them: the Parse psycopg sends for a statement with
    # parameters (decided as it is prepared), its run, then two simple queries.
    statements = [e["statement"] for e in requests if e.get("statement")]
    prepared = q1.replace("%s", "$1")
    assert statements == [prepared, prepared, q2, q3], statements
    assert [e["method"] for e in requests] == ["parse", "execute", "query", "query"], requests
    # Every request has its answer; the failed one carries the server's error.
    by_request: dict[str, list[str]] = {}
    for e in events:
        by_request.setdefault(e["request_id"], []).append(e["type"])
    assert all(kinds[-1] == "response" for kinds in by_request.values()), by_request
    last = [e for e in events if e["type"] == "response"][-1]
    assert "no_such_table" in (last.get("error") or ""), last


def test_mcp_calls_on_postgres_reuse_sessions_and_leave_nothing_behind(gateway):
    db = gateway["db"]
    backends = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'querygate'"
                " AND backend_type = 'client backend'")

    def querygate_sessions() -> int:
        with psycopg.connect(ADMIN_DSN.replace("dbname=postgres", f"dbname={db}"), autocommit=True) as c:
            return c.execute(backends, (db,)).fetchone()[0]

    # A person's call changes its session's settings; the next call does not inherit them.
    calls = [["execute_sql", {"project": db, "sql": "SELECT set_config('work_mem', '7777kB', false) AS w"}]]
    calls += [["execute_sql", {"project": db, "sql": "SELECT current_setting('work_mem') AS w"}]] * 12
    out = s.mcp_drive(gateway, "person", calls)
    first, *rest = out["results"]
    assert first["structured"]["rows"] == [{"w": "7777kB"}], first
    assert all(r["structured"]["rows"][0]["w"] != "7777kB" for r in rest), rest
    # Thirteen calls, a handful of sessions: kept between calls, not one per call.
    assert 1 <= querygate_sessions() <= 4
