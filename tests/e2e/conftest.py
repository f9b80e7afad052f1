"""Session fixtures for the querygate end-to-end tests.

Topology (all on 127.0.0.1, free ports picked at start-up):

    official clients --(API key as Bearer token)--> querygate --> bqemulator

* the emulator is started through run_bqemulator.py from tests/e2e/.venv-emu,
  and the dataset `shop` / table `customers` (12 rows) is seeded directly
  against it with AnonymousCredentials;
* an API key is generated, querygate.toml is written to a temp dir, and
  `querygate serve --config ...` is started and polled on /healthz.

The gateway binary is $QUERYGATE_BIN, or
${CARGO_TARGET_DIR:-~/.cache/querygate/target}/debug/querygate.  If it is
missing the run fails at once; nothing is skipped.

QUERYGATE_E2E_TARGET=emulator points every client straight at the emulator
(no gateway): the harness's own self-check.  Tests marked `gateway_only`
(auth, denials, gzip, audit) are skipped in that mode only.

Test modules run in file order, except test_audit_cli.py, which always runs
last because it checks the audit trail left by the other modules.  Flow tests
append what they expect to find in the audit log to the `audit_ledger` fixture.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import e2e_support as s

TARGET = s.TARGET
DIRECT = s.DIRECT
KEEP_TMP = os.environ.get("QUERYGATE_E2E_KEEP") == "1"

# Servers started by this session, for the failure report in pytest_terminal_summary.
_SERVERS: dict[str, s.Server] = {}
_TMPDIR: list[Path] = []


# --------------------------------------------------------------------------- hooks

def pytest_sessionstart(session):
    if TARGET not in ("gateway", "emulator"):
        pytest.exit(f"QUERYGATE_E2E_TARGET must be 'gateway' or 'emulator', not {TARGET!r}", returncode=4)
    if DIRECT:
        return
    binary = s.default_gateway_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.exit(
            f"querygate binary not found or not executable: {binary}\n"
            "Build it first (cargo build, with CARGO_TARGET_DIR as the project uses; default "
            "~/.cache/querygate/target) or set QUERYGATE_BIN=/path/to/querygate.",
            returncode=1,
        )


def pytest_collection_modifyitems(config, items):
    # Stable sort: everything keeps file order, the audit checks go last.
    items.sort(key=lambda item: Path(str(item.fspath)).name == "test_audit_cli.py")
    if DIRECT:
        skip = pytest.mark.skip(reason="QUERYGATE_E2E_TARGET=emulator: no gateway in this run")
        for item in items:
            if "gateway_only" in item.keywords:
                item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus == 0 or not _SERVERS:
        return
    gw = _SERVERS.get("querygate")
    if gw is not None:
        terminalreporter.section("querygate log (stdout+stderr)")
        terminalreporter.write_line(gw.log_text(limit=30000))
    emu = _SERVERS.get("bqemulator")
    if emu is not None:
        terminalreporter.section("bqemulator log (last 4000 chars)")
        terminalreporter.write_line(emu.log_text(limit=4000))
    if _TMPDIR:
        terminalreporter.write_line(f"e2e temp dir kept for inspection: {_TMPDIR[0]}")


# --------------------------------------------------------------------------- fixtures

@dataclass
class Emulator:
    url: str
    grpc_port: int
    server: s.Server


@dataclass
class Gateway:
    url: str                 # what clients use as api_endpoint
    key: str                 # the API key (Bearer token)
    binary: Path | None      # None in emulator-direct mode
    config_path: Path | None
    store_path: Path | None
    server: s.Server | None


@pytest.fixture(scope="session")
def e2e_tmp(request):
    path = Path(tempfile.mkdtemp(prefix="querygate-e2e-"))
    _TMPDIR.append(path)
    yield path
    if request.session.testsfailed == 0 and not KEEP_TMP:
        shutil.rmtree(path, ignore_errors=True)
        _TMPDIR.clear()


@pytest.fixture(scope="session")
def emulator(e2e_tmp):
    venv_python = s.HERE / ".venv-emu" / "bin" / "python"
    if not venv_python.exists():
        pytest.exit(f"{venv_python} missing: run tests/e2e/setup.sh first", returncode=1)
    rest_port, grpc_port = s.free_port(), s.free_port()
    workdir = e2e_tmp / "emulator"
    gcs_root = workdir / "gcs"
    gcs_root.mkdir(parents=True)
    env = dict(os.environ)
    env.update({
        "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false",
        "BQEMU_GCS_LOCAL_ROOT": str(gcs_root),
        "BQEMU_LOG_LEVEL": "warning",
    })
    server = s.Server(
        name="bqemulator",
        argv=[str(venv_python), str(s.HERE / "run_bqemulator.py"), "start",
              "--rest-host", "127.0.0.1", "--rest-port", str(rest_port),
              "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port),
              "--ephemeral", "--project", s.PROJECT],
        log_path=workdir / "bqemulator.log",
        env=env,
        cwd=workdir,  # so no stray .bqemu.toml is picked up
    )
    _SERVERS["bqemulator"] = server
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{rest_port}/readyz", timeout=60)
        yield Emulator(url=f"http://127.0.0.1:{rest_port}", grpc_port=grpc_port, server=server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def emu_client(emulator):
    """A client talking straight to the emulator (no gateway), for seeding and checks."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    return bigquery.Client(project=s.PROJECT, credentials=AnonymousCredentials(),
                           client_options={"api_endpoint": emulator.url})


@pytest.fixture(scope="session")
def seeded(emu_client):
    """Dataset shop + table customers with the 12 CUSTOMERS rows (loaded via a load job)."""
    from google.cloud import bigquery

    emu_client.create_dataset(bigquery.Dataset(f"{s.PROJECT}.{s.DATASET}"))
    schema = [
        bigquery.SchemaField("id", "INT64", mode="REQUIRED"),
        bigquery.SchemaField("name", "STRING"),
        bigquery.SchemaField("email", "STRING"),
        bigquery.SchemaField("score", "FLOAT64"),
        bigquery.SchemaField("created", "TIMESTAMP"),
    ]
    emu_client.create_table(bigquery.Table(s.TABLE_ID, schema=schema))
    job = emu_client.load_table_from_json(
        s.CUSTOMERS, s.TABLE_ID,
        job_config=bigquery.LoadJobConfig(schema=schema, source_format="NEWLINE_DELIMITED_JSON"))
    job.result(timeout=30)
    ids = [r["id"] for r in emu_client.list_rows(s.TABLE_ID)]
    assert ids == list(range(1, 13)), f"seeding failed: table holds ids {ids}"
    return s.TABLE_ID


@pytest.fixture(scope="session")
def gateway(seeded, emulator, e2e_tmp):
    key = "qg_e2e_" + secrets.token_urlsafe(24)
    if DIRECT:
        yield Gateway(url=emulator.url, key=key, binary=None, config_path=None, store_path=None, server=None)
        return
    binary = s.default_gateway_bin()
    workdir = e2e_tmp / "gateway"
    workdir.mkdir()
    port = s.free_port()
    store = workdir / "querygate.db"
    config = s.write_gateway_config(workdir / "querygate.toml", listen_port=port, store=store,
                                    key_sha256=s.sha256_hex(key), emulator_url=emulator.url)
    env = dict(os.environ)
    env.setdefault("RUST_BACKTRACE", "1")
    env.setdefault("NO_COLOR", "1")  # the log goes to a file and is printed on failure
    server = s.Server(name="querygate", argv=[str(binary), "serve", "--config", str(config)],
                      log_path=workdir / "querygate.log", env=env, cwd=workdir)
    _SERVERS["querygate"] = server
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=30)
        yield Gateway(url=f"http://127.0.0.1:{port}", key=key, binary=binary,
                      config_path=config, store_path=store, server=server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bq(gateway):
    """google-cloud-bigquery client pointed at the gateway, authenticated with the API key."""
    return s.make_client(gateway.url, gateway.key)


@pytest.fixture(scope="session")
def audit_ledger():
    """What the flow tests expect the audit log to contain (checked by test_audit_cli.py).

    Each entry is a dict, see test_audit_cli.py for the kinds:
      {"kind": "query", "flow", "method", "statement", "job_id", "rows"}
      {"kind": "deny", "flow", "method" (a name or a list of accepted names), "job_id"?}
      {"kind": "tabledata", "flow", "pages": [rows per page]}
      {"kind": "call", "flow", "method", "job_id"?}
    """
    return []


@pytest.fixture(scope="session")
def idp(e2e_tmp):
    keys_dir = e2e_tmp / "idp-keys"
    log = e2e_tmp / "idp.log"
    out = e2e_tmp / "idp.ready"
    server = s.Server(name="oidc-provider", log_path=log,
                      argv=["node", str(s.OIDC_DIR / "server.js"), "--keys-dir", str(keys_dir)])
    server.start()
    try:
        deadline = time.monotonic() + 20
        ready = None
        while ready is None and time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith('{"issuer"'):
                    ready = json.loads(line)
            if not server.alive():
                raise RuntimeError(f"oidc-provider exited:\n{server.log_text()}")
            time.sleep(0.05)
        assert ready, f"oidc-provider did not start:\n{server.log_text()}"
        out.write_text(json.dumps(ready))
        yield s.Idp(server, ready["issuer"], keys_dir)
    finally:
        server.stop()
