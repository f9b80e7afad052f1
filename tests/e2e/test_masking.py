"""Masking that holds, through the official Python client, the gateway and the emulator.

`vault.people` holds known sensitive values. Classified columns are masked for everyone
but the privacy group, by rewriting every read of the table into a read of the masked
values (BigQuery's own masking rules: redact keeps the type's default value, last4,
a keyed hash, email domain only):

* ssn, card: tag `pii`, redact, predicates = "deny"
* email: tag `contact`, hash, predicates = "allow"
* phone: tag `partial`, last4, predicates = "allow"

The bypass suite runs every applicable vector of reference/attacks.md (and our own) as the
agent, and asserts that no raw value, nor its lower/upper/reversed/hex/base64/unkeyed-hash
form, appears anywhere in any answer or error; predicate probes answer the same whether or
not they match the hidden value; and the masking key never leaves the gateway.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.request

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import e2e_support as s

pytestmark = pytest.mark.gateway_only

P = f"`{s.PROJECT}.vault.people`"
O = f"`{s.PROJECT}.vault.orders`"
MASKING = """
[[classify]]
tag = "pii"
columns = ["*.vault.people.ssn", "*.vault.people.card"]

[[classify]]
tag = "contact"
columns = ["*.vault.*.email"]

[[classify]]
tag = "partial"
columns = ["*.vault.people.phone"]

[[mask]]
tag = "pii"
strategy = "redact"
unmasked_for = ["group:privacy"]
predicates = "deny"

[[mask]]
tag = "contact"
strategy = "hash"
unmasked_for = ["group:privacy"]
predicates = "allow"

[[mask]]
tag = "partial"
strategy = "last4"
unmasked_for = ["group:privacy"]
predicates = "allow"
"""

PEOPLE = [
    {"id": 1, "name": "Zelda Quorn", "email": "zq7.secret.person@vault-example.org",
     "ssn": "078-05-1120", "phone": "+1-202-555-0143", "card": "4929381332664295"},
    {"id": 2, "name": "Yusuf Prell", "email": "yp4.hidden.human@vault-example.org",
     "ssn": "219-09-9999", "phone": "+1-303-555-0187", "card": "5105105105105100"},
    {"id": 3, "name": "Xena Ostrom", "email": "xo9.private.being@vault-example.org",
     "ssn": "457-55-5462", "phone": "+1-404-555-0199", "card": "371449635398431"},
]
ORDERS = [
    {"order_id": 10, "email": PEOPLE[0]["email"], "total": 12.5},
    {"order_id": 11, "email": PEOPLE[0]["email"], "total": 7.25},
    {"order_id": 12, "email": PEOPLE[2]["email"], "total": 99.0},
]


def forms(value: str) -> set[str]:
    """The raw value and the forms an attacker could compute from it in SQL."""
    b = value.encode()
    out = {value, value.lower(), value.upper(), value[::-1], b.hex(), b.hex().upper(),
           base64.b64encode(b).decode(), base64.b64encode(b[::-1]).decode(),
           hashlib.sha256(b).hexdigest(), base64.b64encode(hashlib.sha256(b).digest()).decode(),
           hashlib.md5(b).hexdigest(), base64.b64encode(hashlib.md5(b).digest()).decode(),
           hashlib.sha1(b).hexdigest()}
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 7:
        out.add(digits)
    return out


SECRETS = {f for p in PEOPLE for k in ("email", "ssn", "card", "phone") for f in forms(p[k])}
# The parts of an email before the domain, on their own.
SECRETS |= {p["email"].split("@")[0] for p in PEOPLE}


@pytest.fixture(scope="module")
def vault(emu_client, seeded):
    emu_client.create_dataset(bigquery.Dataset(f"{s.PROJECT}.vault"), exists_ok=True)
    people = [bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
              bigquery.SchemaField("name", "STRING"),
              bigquery.SchemaField("email", "STRING"),
              bigquery.SchemaField("ssn", "STRING"),
              bigquery.SchemaField("phone", "STRING"),
              bigquery.SchemaField("card", "STRING")]
    orders = [bigquery.SchemaField("order_id", "INT64"),
              bigquery.SchemaField("email", "STRING"),
              bigquery.SchemaField("total", "FLOAT64")]
    for name, schema, rows in (("people", people, PEOPLE), ("orders", orders, ORDERS)):
        table = f"{s.PROJECT}.vault.{name}"
        emu_client.create_table(bigquery.Table(table, schema=schema), exists_ok=True)
        job = emu_client.load_table_from_json(
            rows, table,
            job_config=bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON"))
        job.result(timeout=30)


@pytest.fixture(scope="module")
def gw(vault, emulator, e2e_tmp):
    workdir = e2e_tmp / "masking"
    workdir.mkdir()
    port = s.free_port()
    agent_key = "qg_e2e_mask_agent_" + secrets.token_urlsafe(12)
    privacy_key = "qg_e2e_mask_privacy_" + secrets.token_urlsafe(12)
    config = s.write_gateway_config(workdir / "querygate.toml", listen_port=port, store=workdir / "querygate.db",
                                    key_sha256=s.sha256_hex(agent_key), emulator_url=emulator.url)
    text = config.read_text()
    text = text.replace("\n[[sources]]\n",
                        "\n" + s.api_key_toml("human:priya", ["privacy", "agents"], s.sha256_hex(privacy_key))
                        + "[[sources]]\n", 1)
    config.write_text(text + MASKING)
    server = s.Server(name="querygate-masking",
                      argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=None, cwd=workdir).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        endpoint = f"http://127.0.0.1:{port}"
        key = (workdir / "querygate.db.maskkey").read_text().strip()
        yield {"agent": s.make_client(endpoint, agent_key), "privacy": s.make_client(endpoint, privacy_key),
               "endpoint": endpoint, "agent_key": agent_key, "mask_key": key, "workdir": workdir,
               "config": config}
    finally:
        server.stop()


def keyed(key: str, value: str) -> str:
    return hashlib.sha256((key + value).encode()).hexdigest()


def run(client, sql, **config) -> tuple[str, list | None]:
    """Runs `sql` both ways the client can (jobs.query and jobs.insert + getQueryResults)
    and returns everything the client saw as text, with the rows of the first way."""
    seen = []
    rows = None
    for how in ("query_and_wait", "query"):
        try:
            job_config = bigquery.QueryJobConfig(**config) if config else None
            if how == "query_and_wait":
                got = [dict(r.items()) for r in client.query_and_wait(sql, job_config=job_config)]
                rows = got if rows is None else rows
                seen.append(repr(got))
            else:
                job = client.query(sql, job_config=job_config)
                got = [dict(r.items()) for r in job.result()]
                seen.append(repr(got))
                # What jobs.get shows of the job, too.
                seen.append(json.dumps(client.get_job(job.job_id)._properties))
        except gexc.GoogleAPICallError as e:
            seen.append(f"{type(e).__name__}: {e} {getattr(e, 'errors', '')}")
    return "\n".join(seen), rows


# Every vector of reference/attacks.md that applies to BigQuery, and our own.
BYPASSES = [
    ("direct", f"SELECT ssn, email, phone, card FROM {P}"),
    ("star", f"SELECT * FROM {P}"),
    ("star except", f"SELECT * EXCEPT (name) FROM {P}"),
    ("1 lower", f"SELECT LOWER(email) AS e, UPPER(ssn) AS s FROM {P}"),
    ("1 concat", f"SELECT CONCAT(ssn, '|', card) AS x FROM {P}"),
    ("1 substr", f"SELECT SUBSTR(card, 1, 8) AS x, SUBSTR(phone, 1, 9) AS y FROM {P}"),
    ("1 reverse", f"SELECT REVERSE(ssn) AS x FROM {P}"),
    ("1 hex", f"SELECT TO_HEX(CAST(ssn AS BYTES)) AS x FROM {P}"),
    ("1 base64", f"SELECT TO_BASE64(CAST(card AS BYTES)) AS x FROM {P}"),
    ("1 unkeyed hash", f"SELECT TO_HEX(SHA256(ssn)) AS a, TO_HEX(MD5(card)) AS b, TO_HEX(SHA256(email)) AS c FROM {P}"),
    ("1 replace", f"SELECT REPLACE(ssn, '-', '') AS x, REPLACE(phone, '-', '') AS y FROM {P}"),
    ("2 CTE", f"WITH c AS (SELECT ssn AS x, email AS y FROM {P}) SELECT x, y FROM c"),
    ("2 subquery", f"SELECT x FROM (SELECT card AS x FROM {P})"),
    ("2 scalar subquery", f"SELECT (SELECT MAX(ssn) FROM {P}) AS x"),
    ("2 UNION", f"SELECT name FROM {P} UNION ALL SELECT ssn FROM {P} UNION ALL SELECT email FROM {P}"),
    ("3 whole row", f"SELECT t FROM {P} AS t"),
    ("3 TO_JSON_STRING", f"SELECT TO_JSON_STRING(t) AS j FROM {P} AS t"),
    ("3 FORMAT", f"SELECT FORMAT('%t', t) AS f FROM {P} AS t"),
    ("3 ARRAY_AGG row", f"SELECT ARRAY_AGG(t) AS a FROM {P} AS t"),
    ("3 AS STRUCT", f"SELECT AS STRUCT * FROM {P}"),
    ("4 UNNEST", f"SELECT v FROM {P}, UNNEST([ssn, card, email]) AS v"),
    ("4 array", f"SELECT [ssn, card] AS a FROM {P}"),
    ("5 MAX", f"SELECT MAX(ssn) AS a, MIN(card) AS b, MAX(email) AS c FROM {P}"),
    ("5 STRING_AGG", f"SELECT STRING_AGG(ssn) AS a, STRING_AGG(card, ',') AS b FROM {P}"),
    ("5 ARRAY_AGG", f"SELECT ARRAY_AGG(ssn) AS a FROM {P}"),
    ("5 APPROX_TOP_COUNT", f"SELECT APPROX_TOP_COUNT(ssn, 5) AS a FROM {P}"),
    ("6 predicate inference", f"SELECT COUNT(*) AS n FROM {P} WHERE ssn LIKE '0%'"),
    ("7 dictionary join", f"SELECT g FROM {P} JOIN UNNEST(['078-05-1120']) AS g ON ssn = g"),
    ("8 ORDER BY", f"SELECT name FROM {P} ORDER BY ssn"),
    ("8 GROUP BY", f"SELECT COUNT(*) AS n FROM {P} GROUP BY card"),
    ("8 window", f"SELECT name, ROW_NUMBER() OVER (ORDER BY ssn) AS r FROM {P}"),
    ("9 CTAS", f"CREATE TABLE `{s.PROJECT}.vault.copy` AS SELECT ssn FROM {P}"),
    ("9 INSERT SELECT", f"INSERT INTO `{s.PROJECT}.shop.customers` (id, name) SELECT id, ssn FROM {P}"),
    ("9 EXPORT DATA", f"EXPORT DATA OPTIONS (uri = 'gs://b/x-*.csv', format = 'CSV') AS SELECT ssn FROM {P}"),
    ("10 ERROR", f"SELECT ERROR(CONCAT('leak:', ssn, email)) FROM {P}"),
    ("10 cast", f"SELECT CAST(card AS INT64) + CAST(ssn AS INT64) AS x FROM {P}"),
    ("13 second statement", f"SELECT 1; SELECT ssn FROM {P}"),
    ("13 comments", f"/* harmless */ -- really\nSELECT ssn FROM {P}"),
    ("13 EXECUTE IMMEDIATE", f"EXECUTE IMMEDIATE 'SELECT ssn FROM {P}'"),
    ("wildcard table", f"SELECT ssn FROM `{s.PROJECT}.vault.peo*`"),
    ("time travel", f"SELECT ssn FROM {P} FOR SYSTEM_TIME AS OF CURRENT_TIMESTAMP()"),
    ("jobs history", "SELECT query FROM `region-us`.INFORMATION_SCHEMA.JOBS"),
    ("mask key", "SELECT @__querygate_mask_key AS k"),
    ("CTE shadowing", f"WITH people AS (SELECT * FROM {P}) SELECT ssn FROM people"),
    ("join laundering", f"SELECT o.order_id, p.card FROM {O} AS o JOIN {P} AS p ON o.email = p.email"),
    # Spelling: names compare the way the upstream resolves them (case-insensitively).
    ("case table", f"SELECT ssn, email, card FROM `{s.PROJECT}.vault.PEOPLE`"),
    ("case dataset", f"SELECT ssn, email, card FROM `{s.PROJECT}.Vault.People`"),
    ("case columns", f"SELECT SSN, Email, CARD, pHoNe FROM {P}"),
    ("case star", f"SELECT * FROM `{s.PROJECT}.VAULT.people`"),
    ("case wildcard", f"SELECT ssn FROM `{s.PROJECT}.VAULT.PEO*`"),
    ("case CTE shadowing", f"WITH PEOPLE AS (SELECT 1 AS x) SELECT ssn FROM `vault.people`"),
    ("TABLE in a query", f"SELECT * FROM (TABLE {P})"),
    ("TABLE in a CTE", f"WITH c AS (TABLE `{s.PROJECT}.vault.PEOPLE`) SELECT ssn FROM c"),
    ("IN subquery", f"SELECT name FROM {O} WHERE email IN (SELECT ssn FROM `{s.PROJECT}.vault.People`)"),
]


@pytest.mark.parametrize("name,sql", BYPASSES, ids=[b[0] for b in BYPASSES])
def test_no_bypass_returns_a_sensitive_value(gw, name, sql):
    seen, _ = run(gw["agent"], sql)
    leaked = sorted(v for v in SECRETS if v in seen)
    assert not leaked, f"{name}: {leaked} in {seen[:2000]}"
    assert gw["mask_key"] not in seen


def test_the_default_dataset_does_not_hide_a_masked_table(gw):
    sql = "SELECT ssn, card FROM people"
    seen, _ = run(gw["agent"], sql, default_dataset=f"{s.PROJECT}.vault")
    assert not [v for v in SECRETS if v in seen], seen
    # A job (bqemulator's jobs.query ignores defaultDataset; BigQuery's does not).
    job = gw["agent"].query(sql, job_config=bigquery.QueryJobConfig(default_dataset=f"{s.PROJECT}.vault"))
    assert [dict(r.items()) for r in job.result()] == [{"ssn": "", "card": ""}] * 3


def test_masked_values_keep_their_type_and_follow_each_strategy(gw):
    key = gw["mask_key"]
    _, rows = run(gw["agent"], f"SELECT id, name, email, ssn, phone, card FROM {P} ORDER BY id")
    assert rows == [{"id": p["id"], "name": p["name"], "email": keyed(key, p["email"]), "ssn": "",
                     "phone": "*" * (len(p["phone"]) - 4) + p["phone"][-4:], "card": ""}
                    for p in PEOPLE]
    # Everything above the read sees the masked value.
    _, rows = run(gw["agent"], f"SELECT LENGTH(ssn) AS n, LOWER(phone) AS p FROM {P} WHERE id = 1")
    assert rows == [{"n": 0, "p": "***********0143"}]


def test_hashed_columns_stay_joinable(gw):
    # predicates = "allow" for the email tag: the join runs on the hashes.
    _, rows = run(gw["agent"], f"SELECT p.id, COUNT(*) AS n FROM {P} AS p JOIN {O} AS o "
                               f"ON p.email = o.email GROUP BY p.id ORDER BY p.id")
    assert rows == [{"id": 1, "n": 2}, {"id": 3, "n": 1}]


@pytest.mark.parametrize("probe,miss", [
    ("email = '{email}'", "email = 'nobody@nowhere.example'"),
    ("STARTS_WITH(email, 'zq7')", "STARTS_WITH(email, 'qqq')"),
    ("phone = '{phone}'", "phone = '+1-999-555-0000'"),
    ("phone LIKE '+1-202%'", "phone LIKE '+1-999%'"),
])
def test_predicate_probes_answer_the_same_whether_or_not_they_match(gw, probe, miss):
    hit = probe.format(**PEOPLE[0])
    _, a = run(gw["agent"], f"SELECT COUNT(*) AS n FROM {P} WHERE {hit}")
    _, b = run(gw["agent"], f"SELECT COUNT(*) AS n FROM {P} WHERE {miss}")
    assert a == b == [{"n": 0}]


def test_predicates_on_a_deny_tag_are_refused_with_what_to_do(gw):
    with pytest.raises(gexc.Forbidden) as ei:
        gw["agent"].query_and_wait(f"SELECT id FROM {P} WHERE ssn = '078-05-1120'")
    text = str(ei.value)
    assert "vault.people.ssn is classified pii and masked for agent:claude-code" in text, text
    assert 'predicates = "deny"' in text


def test_the_privacy_group_sees_clear_values(gw):
    _, rows = run(gw["privacy"], f"SELECT email, ssn, phone, card FROM {P} WHERE id = 1")
    p = PEOPLE[0]
    assert rows == [{"email": p["email"], "ssn": p["ssn"], "phone": p["phone"], "card": p["card"]}]


def test_dry_runs_show_the_masked_query_s_schema(gw):
    job = gw["agent"].query(f"SELECT id, ssn, email FROM {P}",
                            job_config=bigquery.QueryJobConfig(dry_run=True))
    assert [(f.name, f.field_type) for f in job.schema] == [
        ("id", "INTEGER"), ("ssn", "STRING"), ("email", "STRING")]


def test_the_masking_key_never_leaves_the_gateway(gw):
    agent = gw["agent"]
    job = agent.query(f"SELECT email FROM {P}")
    job.result()
    shown = json.dumps(agent.get_job(job.job_id)._properties)
    listed = json.dumps([j._properties for j in agent.list_jobs(max_results=50)])
    for text in (shown, listed):
        assert gw["mask_key"] not in text
        assert "__querygate_mask_key\", \"parameterValue" not in text
    # The job shows the statement that ran: the masked read.
    assert "__qg_src" in agent.get_job(job.job_id).query


def test_the_audit_log_records_the_rewritten_statement_beside_the_original(gw):
    sql = f"SELECT card FROM {P} WHERE id = 2"
    gw["agent"].query_and_wait(sql)
    cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(gw["config"]),
                   "--identity", s.IDENTITY, "--since", "1h", "--json")
    assert cp.returncode == 0, s.describe(cp)
    out = cp.stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    mine = [r for r in records if r.get("statement") == sql and r.get("phase") == "decided"]
    assert mine, out[-2000:]
    assert "__qg_src" in mine[-1]["rewritten"]
    assert gw["mask_key"] not in out


def test_direct_row_reads_of_the_table_are_masked_the_same_way(gw):
    key = gw["mask_key"]
    table = f"{s.PROJECT}.vault.people"
    agent = gw["agent"]
    rows = sorted((dict(r.items()) for r in agent.list_rows(table)), key=lambda r: r["id"])
    assert rows == [{"id": p["id"], "name": p["name"], "email": keyed(key, p["email"]), "ssn": "",
                     "phone": "*" * (len(p["phone"]) - 4) + p["phone"][-4:], "card": ""}
                    for p in PEOPLE]
    # selectedFields reorders the cells; the masks follow the columns.
    fields = [bigquery.SchemaField("card", "STRING"), bigquery.SchemaField("id", "INT64"),
              bigquery.SchemaField("email", "STRING")]
    picked = [dict(r.items()) for r in agent.list_rows(table, selected_fields=fields)]
    assert sorted(picked, key=lambda r: r["id"]) == [
        {"card": "", "id": p["id"], "email": keyed(key, p["email"])} for p in PEOPLE]
    # Hashes from a row read join with hashes from a query.
    _, queried = run(agent, f"SELECT email FROM {P} WHERE id = 1")
    assert queried[0]["email"] == rows[0]["email"]
    seen = repr(rows) + repr(picked)
    assert not [v for v in SECRETS if v in seen]
    # The privacy group reads clear rows.
    clear = {r["id"]: r["ssn"] for r in gw["privacy"].list_rows(table)}
    assert clear[1] == PEOPLE[0]["ssn"]


def masked_rows(key):
    return [{"id": p["id"], "ssn": "", "email": keyed(key, p["email"]), "card": ""} for p in PEOPLE]


@pytest.mark.parametrize("table", ["vault.PEOPLE", "Vault.People", "VAULT.people"])
def test_a_miscased_name_reads_the_same_masked_table(gw, table):
    """The emulator (like BigQuery's case-insensitive datasets and DuckDB) resolves a name in
    another case to the same table: the read is masked as the table is."""
    sql = f"SELECT id, ssn, email, card FROM `{s.PROJECT}.{table}` ORDER BY id"
    _, rows = run(gw["agent"], sql)
    assert rows == masked_rows(gw["mask_key"])
    # The default dataset, miscased, too.
    _, rows = run(gw["agent"], "SELECT id, SSN AS ssn, email, card FROM PEOPLE ORDER BY id",
                  default_dataset=f"{s.PROJECT}.{table.split('.')[0]}")
    seen = repr(rows)
    assert not [v for v in SECRETS if v in seen], seen
    # Direct row reads of the miscased table (the client's tables.get may not find it
    # under that spelling; tabledata.list over raw HTTP).
    dataset, name = table.split(".")
    req = urllib.request.Request(
        f"{gw['endpoint']}/bigquery/v2/projects/{s.PROJECT}/datasets/{dataset}/tables/{name}/data",
        headers={"Authorization": f"Bearer {gw['agent_key']}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            seen = r.read().decode()
    except urllib.error.HTTPError as e:
        seen = e.read().decode()
    assert not [v for v in SECRETS if v in seen], seen


def post(gw, path, body, key=None):
    req = urllib.request.Request(f"{gw['endpoint']}/bigquery/v2/projects/{s.PROJECT}/{path}",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {key or gw['agent_key']}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.parametrize("sql", [
    f"SELECT email, ? AS k FROM {P}",
    f"SELECT email, @`__QUERYGATE_MASK_KEY` AS k FROM {P}",
    f"SELECT email, @`\\x5f_querygate_mask_key` AS k FROM {P}",
])
def test_no_spelling_binds_the_masking_key_into_a_result(gw, sql):
    """Positional markers sent with named parameters, or the key's name in another case or
    quoting, must not bind the gateway's key parameter into a returned value."""
    for path, body in (("queries", {"query": sql, "useLegacySql": False, "parameterMode": "NAMED",
                                    "queryParameters": []}),
                       ("jobs", {"configuration": {"query": {
                           "query": sql, "useLegacySql": False, "parameterMode": "NAMED",
                           "queryParameters": []}}})):
        status, text = post(gw, path, body)
        assert gw["mask_key"] not in text, (path, status, text[:500])
        assert not [v for v in SECRETS if v in text], text[:500]


def test_a_view_over_masked_columns_is_refused_and_says_so(gw, emu_client):
    view = bigquery.Table(f"{s.PROJECT}.vault.people_view")
    view.view_query = f"SELECT id, name, ssn, email FROM `{s.PROJECT}.vault.people`"
    emu_client.create_table(view, exists_ok=True)
    outer = bigquery.Table(f"{s.PROJECT}.vault.people_view2")
    outer.view_query = f"SELECT * FROM `{s.PROJECT}.vault.people_view`"
    emu_client.create_table(outer, exists_ok=True)
    for name in ("people_view", "people_view2", "PEOPLE_VIEW"):
        sql = f"SELECT * FROM `{s.PROJECT}.vault.{name}`"
        seen, _ = run(gw["agent"], sql)
        assert not [v for v in SECRETS if v in seen], seen[:1000]
        with pytest.raises(gexc.Forbidden) as ei:
            gw["agent"].query_and_wait(sql)
        text = str(ei.value)
        # The emulator shows no view definition (BigQuery does, and querygate then follows
        # it: the pipeline's tests cover views over unmasked columns, which read as before).
        assert "the view test-project.vault." in text and "masked for agent:claude-code" in text, text
        assert "directly" in text, text
    # The privacy group, for whom nothing is masked, reads the view.
    rows = gw["privacy"].query_and_wait(f"SELECT ssn FROM `{s.PROJECT}.vault.people_view` WHERE id = 1")
    assert [r.ssn for r in rows] == [PEOPLE[0]["ssn"]]


def test_a_job_id_belongs_to_the_identity_whose_job_the_upstream_accepted(gw, emu_client):
    agent, privacy = gw["agent"], gw["privacy"]
    job_id = "e2e_owned_" + secrets.token_hex(6)
    agent.query(f"SELECT id FROM {P}", job_id=job_id).result()
    # Another identity asking for the same id is refused before anything goes upstream.
    with pytest.raises(gexc.Conflict) as ei:
        privacy.query(f"SELECT ssn FROM {P}", job_id=job_id)
    assert "another identity" in str(ei.value), ei.value
    with pytest.raises(gexc.NotFound):
        privacy.get_job(job_id)
    # A job the upstream already has (made around the gateway): BigQuery refuses the
    # duplicate id (then nothing is claimed: the pipeline's tests), the emulator replaces
    # the job with the new one. Either way the agent reads only its own query's rows.
    outside = "e2e_outside_" + secrets.token_hex(6)
    emu_client.query(f"SELECT ssn, card FROM {P}", job_id=outside).result()
    try:
        got = repr([dict(r.items()) for r in agent.query(f"SELECT id FROM {P}", job_id=outside).result()])
        got += json.dumps(agent.get_job(outside)._properties)
    except gexc.GoogleAPICallError as e:
        got = str(e)
    assert not [v for v in SECRETS if v in got], got
