"""Request shapes that a reader could take two ways, over raw HTTP, through the gateway and the emulator.

A gateway must decide on exactly what the upstream executes. Each test sends a request that
the gateway once read one way and the upstream (bqemulator here, BigQuery in production)
another, and checks that the gateway now either reads it as the upstream does or refuses it:

* a path segment whose decoded form holds `/` (`people%2Fdata`: a harmless tables.get to
  the gateway, tabledata.list of a masked table to an upstream that routes on the decoded
  path), dot segments, double encoding;
* a query parameter given twice (the gateway read the first, the upstream the last), or
  with a percent-encoded name (`selected%46ields`, `access%5Ftoken`);
* body fields BigQuery does not read where the gateway did (`configuration.query.dryRun`
  skipped approval while the upstream ran the job), fields it does not define, fields the
  gateway does not analyse, a key given twice;
* a multi-byte character at byte 12 of a statement, which panicked in decoding and left
  the request unaudited.

The module runs its own gateway: `shapes.people.ssn` is masked (redacted) for agents, the
policy is e2e_support's (a scan over 10 GiB needs an owner's approval), and between the
gateway and the emulator sit a recorder (every request the upstream gets) and
e2e_support.byte_shim (a statement carrying `/*bytes=N*/` is reported as N bytes).
Requests are sent with http.client, so that nothing re-quotes the path or the query string.
"""
from __future__ import annotations

import http.client
import http.server
import json
import secrets
import threading
import urllib.parse

import pytest
from google.cloud import bigquery

import e2e_support as s

pytestmark = pytest.mark.gateway_only

DATASET = "shapes"
PEOPLE = [
    {"id": 1, "name": "Ines Quarto", "ssn": "512-43-9876"},
    {"id": 2, "name": "Olu Brandt", "ssn": "623-54-1987"},
]
SSNS = [p["ssn"] for p in PEOPLE]
TABLES = f"/bigquery/v2/projects/{s.PROJECT}/datasets/{DATASET}/tables"
JOBS = f"/bigquery/v2/projects/{s.PROJECT}/jobs"
QUERIES = f"/bigquery/v2/projects/{s.PROJECT}/queries"
BIG = "/*bytes=21474836480*/"  # 20 GiB: over the policy's 10 GiB approval threshold
MASKING = """
[[classify]]
tag = "pii"
columns = ["*.shapes.people.ssn"]

[[mask]]
tag = "pii"
strategy = "redact"
unmasked_for = ["group:privacy"]
predicates = "deny"
"""


class Recorder:
    """An HTTP server that forwards every request, byte for byte, to `upstream` and keeps
    what it forwarded (method, request target, body)."""

    def __init__(self, upstream: str):
        self.seen: list[tuple[str, str, bytes]] = []
        host = urllib.parse.urlsplit(upstream)
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorder.seen.append((self.command, self.path, body))
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
                headers = {"Content-Type": "application/json"} if body else {}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def since(self, mark: int) -> list[tuple[str, str, bytes]]:
        return self.seen[mark:]


@pytest.fixture(scope="module")
def people(emu_client, seeded):
    emu_client.create_dataset(bigquery.Dataset(f"{s.PROJECT}.{DATASET}"), exists_ok=True)
    schema = [bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
              bigquery.SchemaField("name", "STRING"),
              bigquery.SchemaField("ssn", "STRING")]
    table = f"{s.PROJECT}.{DATASET}.people"
    emu_client.create_table(bigquery.Table(table, schema=schema), exists_ok=True)
    emu_client.load_table_from_json(
        PEOPLE, table,
        job_config=bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON"),
    ).result(timeout=30)
    return table


class Gw:
    def __init__(self, port, key, config, recorder):
        self.port, self.key, self.config, self.recorder = port, key, config, recorder

    def send(self, method: str, target: str, body=None, key: str | None = None):
        """One raw request; returns (status, parsed JSON or text). `body` is a dict (sent as
        JSON), bytes/str (sent as is) or None."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {key or self.key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode() if isinstance(body, dict) else (
                body.encode() if isinstance(body, str) else body)
            headers["Content-Type"] = "application/json"
        conn.request(method, target, body=data, headers=headers)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text

    def audit(self) -> list[dict]:
        cp = s.run_cli(s.default_gateway_bin(), "audit", "search", "--config", str(self.config),
                       "--since", "1h", "--json")
        assert cp.returncode == 0, s.describe(cp)
        return [json.loads(line) for line in cp.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gw(people, emulator, e2e_tmp):
    workdir = e2e_tmp / "shapes"
    workdir.mkdir()
    shim = s.byte_shim(emulator.url)
    recorder = Recorder(f"http://127.0.0.1:{shim.server_address[1]}")
    port = s.free_port()
    key = "qg_e2e_shapes_" + secrets.token_urlsafe(12)
    config = s.write_gateway_config(workdir / "querygate.toml", listen_port=port, store=workdir / "querygate.db",
                                    key_sha256=s.sha256_hex(key), emulator_url=recorder.url)
    config.write_text(config.read_text() + MASKING)
    server = s.Server(name="querygate-shapes", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=None, cwd=workdir).start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield Gw(port, key, config, recorder)
    finally:
        server.stop()
        shim.shutdown()
        recorder.server.shutdown()


def _error(status, doc, code, reason):
    assert status == code, f"{status}: {str(doc)[:800]}"
    err = doc["error"]
    assert err["code"] == code and err["errors"][0]["reason"] == reason, err
    return err["message"]


def _no_ssn(doc):
    text = json.dumps(doc)
    assert not [v for v in SSNS if v in text], text[:2000]


# ------------------------------------------------------------------------- paths

@pytest.mark.parametrize("segment,shows", [
    ("people%2Fdata", "people/data"),
    ("people%2fdata", "people/data"),
    ("people%252Fdata", "people%2Fdata"),
    ("x%2F..%2Fpeople%2Fdata", "x/../people/data"),
    ("people%5Cdata", "people\\\\data"),
    ("people%3Fx", "people?x"),
    ("%2E%2E", "dot segment"),
    ("people%00", "people\\0"),
])
def test_a_path_segment_read_as_structure_is_refused(gw, segment, shows):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("GET", f"{TABLES}/{segment}")
    _no_ssn(doc)
    message = _error(status, doc, 400, "invalid")
    assert message.startswith("Invalid path") and shows in message, message
    assert gw.recorder.since(mark) == [], "nothing reaches the upstream"


def test_the_refused_path_is_audited_as_sent(gw):
    target = f"{TABLES}/people%2Fdata"
    gw.send("GET", target)
    mine = [r for r in gw.audit() if r.get("method") == f"GET {target}"]
    assert mine and all(r.get("decision") == "deny" for r in mine), mine


def test_paths_reach_the_upstream_in_one_canonical_encoding(gw):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("GET", f"{TABLES}/%70eople")  # %70 is `p`
    assert status == 200, doc
    assert doc["tableReference"]["tableId"] == "people"
    assert [p for _, p, _ in gw.recorder.since(mark) if "people" in p] == [f"{TABLES}/people"]


# ------------------------------------------------------------------------- query strings

def test_a_parameter_given_twice_is_refused(gw):
    mark = len(gw.recorder.seen)
    # The gateway read the first (masks for `id`), the upstream the last (the ssn column).
    status, doc = gw.send("GET", f"{TABLES}/people/data?selectedFields=id&selectedFields=ssn")
    _no_ssn(doc)
    message = _error(status, doc, 400, "invalid")
    assert "`selectedFields` is given more than once" in message, message
    assert gw.recorder.since(mark) == []


@pytest.mark.parametrize("name", ["selected%46ields", "selected_fields", "%73electedFields"])
def test_an_encoded_parameter_name_is_read_as_the_upstream_reads_it(gw, name):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("GET", f"{TABLES}/people/data?{name}=ssn,id")
    assert status == 200, doc
    _no_ssn(doc)
    cells = sorted(([c["v"] for c in row["f"]] for row in doc["rows"]), key=lambda r: r[1])
    assert cells == [["", "1"], ["", "2"]], cells
    forwarded = [p for _, p, _ in gw.recorder.since(mark) if p.startswith(f"{TABLES}/people/data")]
    assert forwarded == [f"{TABLES}/people/data?selectedFields=ssn%2Cid"], forwarded


def test_credentials_in_the_query_string_never_reach_the_upstream(gw):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("GET", f"{TABLES}/people/data?maxResults=1&access%5Ftoken={gw.key}&%6Bey={gw.key}")
    assert status == 200, doc
    _no_ssn(doc)
    sent = gw.recorder.since(mark)
    assert sent and not [p for _, p, _ in sent if gw.key in p], sent
    assert f"{TABLES}/people/data?maxResults=1" in [p for _, p, _ in sent]


@pytest.mark.parametrize("query,shows", [
    ("maxResults=1;selectedFields=ssn", "`;`"),
    ("alt=proto", "alt=proto"),
    ("callback=f", "`callback`"),
    ("selectedfields=ssn", "`selectedfields`"),
])
def test_a_query_string_another_server_could_read_otherwise_is_refused(gw, query, shows):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("GET", f"{TABLES}/people/data?{query}")
    _no_ssn(doc)
    message = _error(status, doc, 400, "invalid")
    assert message.startswith("Invalid query string") and shows in message, message
    assert gw.recorder.since(mark) == []


# ------------------------------------------------------------------------- bodies

def _job(query: dict, **config) -> dict:
    return {"configuration": {"query": {"useLegacySql": False, **query}, **config}}


def test_dry_run_inside_the_query_configuration_is_refused(gw):
    # BigQuery (and the emulator) read dryRun only from `configuration`: this job would run,
    # and the gateway, taking it for a dry run, skipped the approval a 20 GiB scan needs.
    sql = f"{BIG} SELECT id, name FROM `{s.PROJECT}.{DATASET}.people`"
    mark = len(gw.recorder.seen)
    status, doc = gw.send("POST", JOBS, _job({"query": sql, "dryRun": True}))
    message = _error(status, doc, 400, "invalid")
    assert "`configuration.query.dryRun`" in message and "`configuration.dryRun`" in message, message
    assert [m for m, p, _ in gw.recorder.since(mark) if p.startswith(JOBS)] == []


def test_a_real_dry_run_is_still_answered_without_approval(gw):
    sql = f"{BIG} SELECT id, name FROM `{s.PROJECT}.{DATASET}.people`"
    mark = len(gw.recorder.seen)
    status, doc = gw.send("POST", JOBS, _job({"query": sql}, dryRun=True))
    assert status == 200, doc
    inserted = [json.loads(b) for m, p, b in gw.recorder.since(mark) if m == "POST" and b]
    assert inserted and all(j["configuration"].get("dryRun") is True for j in inserted), inserted
    # And the real run waits for an owner.
    status, doc = gw.send("POST", JOBS, _job({"query": sql}))
    assert status == 200, doc
    assert doc["status"]["state"] == "PENDING", doc


@pytest.mark.parametrize("path,body,code,reason,shows", [
    (JOBS, _job({"query": "SELECT 1", "foo": 1}), 400, "invalid",
     "querygate does not recognise `configuration.query.foo`; remove it"),
    (QUERIES, {"query": "SELECT 1", "useLegacySql": False, "dry_run": True}, 400, "invalid", "`dry_run`"),
    (QUERIES, {"query": "SELECT 1", "useLegacySql": False, "defaultDataset": {"dataset_id": DATASET}}, 400,
     "invalid", "`defaultDataset.dataset_id`"),
    (JOBS, _job({"query": "SELECT * FROM people", "tableDefinitions": {
        "people": {"sourceUris": ["gs://bucket/people.csv"], "sourceFormat": "CSV"}}}), 403, "accessDenied",
     "`tableDefinitions`"),
    (QUERIES, {"query": "SELECT 1", "useLegacySql": False, "createSession": True}, 403, "accessDenied",
     "`createSession`"),
    (QUERIES, {"query": "SELECT 1", "useLegacySql": False,
               "connectionProperties": [{"key": "session_id", "value": "abc"}]}, 403, "accessDenied",
     "`connectionProperties`"),
    (JOBS, {"configuration": {"query": {"query": "SELECT 1", "useLegacySql": False},
                              "extract": {"sourceTable": {"projectId": s.PROJECT, "datasetId": DATASET,
                                                          "tableId": "people"},
                                          "destinationUris": ["gs://bucket/x.csv"]}}}, 400, "invalid",
     "exactly one of"),
])
def test_body_fields_are_read_as_bigquery_defines_them(gw, path, body, code, reason, shows):
    mark = len(gw.recorder.seen)
    status, doc = gw.send("POST", path, body)
    message = _error(status, doc, code, reason)
    assert shows in message, message
    assert [p for _, p, _ in gw.recorder.since(mark) if p.startswith((JOBS, QUERIES))] == []


def test_a_body_key_given_twice_is_refused(gw):
    # Which `query` a JSON parser keeps differs; the gateway analyzed one, the upstream may run the other.
    body = ('{"query": "SELECT 1 AS x", "useLegacySql": false, '
            f'"query": "SELECT ssn FROM `{s.PROJECT}.{DATASET}.people`"}}')
    mark = len(gw.recorder.seen)
    status, doc = gw.send("POST", QUERIES, body)
    _no_ssn(doc)
    message = _error(status, doc, 400, "invalid")
    assert "`query` is given twice" in message, message
    assert gw.recorder.since(mark) == []


# ------------------------------------------------------------------------- no panics

def test_a_multibyte_character_at_byte_12_is_answered_and_audited(gw):
    sql = "SELECT '€€€' AS x"  # byte 12 falls inside the second €
    status, doc = gw.send("POST", QUERIES, {"query": sql, "useLegacySql": False})
    assert status == 200, doc
    assert doc["rows"] == [{"f": [{"v": "€€€"}]}]
    assert [r for r in gw.audit() if r.get("statement") == sql and r.get("decision") == "allow"]


# ------------------------------------------------------------------------- the clients still work

def test_the_python_client_and_db_api_with_job_options(gw):
    client = s.make_client(f"http://127.0.0.1:{gw.port}", gw.key)
    config = bigquery.QueryJobConfig(
        labels={"team": "shapes"}, use_query_cache=False, maximum_bytes_billed=10 ** 9,
        priority=bigquery.QueryPriority.INTERACTIVE, job_timeout_ms=60000,
        query_parameters=[bigquery.ScalarQueryParameter("n", "INT64", 1)],
        default_dataset=f"{s.PROJECT}.{DATASET}")
    rows = [dict(r.items()) for r in client.query_and_wait("SELECT id, ssn FROM people WHERE id = @n",
                                                           job_config=config)]
    assert rows == [{"id": 1, "ssn": ""}]
    job = client.query("SELECT name FROM people ORDER BY id", job_config=config)
    assert [r["name"] for r in job.result()] == [p["name"] for p in PEOPLE]
    dry = client.query("SELECT name FROM people", job_config=bigquery.QueryJobConfig(
        dry_run=True, default_dataset=f"{s.PROJECT}.{DATASET}"))
    assert dry.state == "DONE"
    from google.cloud.bigquery import dbapi

    cursor = dbapi.connect(client).cursor()
    cursor.execute(f"SELECT id, ssn FROM `{s.PROJECT}.{DATASET}.people` WHERE id > %(lo)s ORDER BY id",
                   {"lo": 0})
    assert [tuple(r) for r in cursor.fetchall()] == [(1, ""), (2, "")]
    picked = client.list_rows(f"{s.PROJECT}.{DATASET}.people",
                              selected_fields=[bigquery.SchemaField("ssn", "STRING")], max_results=5)
    assert sorted(r["ssn"] for r in picked) == ["", ""]
