"""querygate signing in to an upstream PostgreSQL that asks for a password: SCRAM-SHA-256 and
MD5, against a cluster of its own that the test creates (initdb + pg_ctl as the postgres
user, on a free port, with password authentication in pg_hba.conf), since the machine's
PostgreSQL trusts 127.0.0.1. A wrong password is a clear FATAL naming what the upstream said.
Needs root (to run the cluster as postgres); skipped, saying why, otherwise. And the upstream
connection encrypted as `tls` says (`require`; `verify-full` against the machine's snakeoil
certificate for localhost), seen from the server's own pg_stat_ssl.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

import e2e_support as s

pytestmark = pytest.mark.gateway_only

BIN = Path("/usr/lib/postgresql/15/bin")

def can_run_a_cluster() -> bool:
    return os.geteuid() == 0 and (BIN / "initdb").exists()


def as_postgres(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
                          timeout=120, **kw)


@pytest.fixture(scope="module")
def cluster(e2e_tmp):
    if not can_run_a_cluster():
        pytest.skip("needs root and PostgreSQL 15's initdb to run a password-protected cluster")
    home = Path(f"/tmp/qg-pgcluster-{secrets.token_hex(4)}")
    home.mkdir()
    shutil.chown(home, "postgres", "postgres")
    data = home / "data"
    pwfile = home / "pw"
    scram_pw = secrets.token_urlsafe(12)
    pwfile.write_text(scram_pw + "\n")
    shutil.chown(pwfile, "postgres", "postgres")
    cp = as_postgres(str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                     "--auth-host=scram-sha-256", f"--pwfile={pwfile}")
    assert cp.returncode == 0, s.describe(cp)
    md5_pw = secrets.token_urlsafe(12)
    hba = data / "pg_hba.conf"
    hba.write_text(f"host all md5user 127.0.0.1/32 md5\n" + hba.read_text())
    port = s.free_port()
    cp = as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "start",
                     "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1")
    assert cp.returncode == 0, s.describe(cp) + (home / "log").read_text()
    try:
        cp = as_postgres("psql", "-h", str(home), "-p", str(port), "-U", "postgres", "-c",
                         f"SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD '{md5_pw}'")
        assert cp.returncode == 0, s.describe(cp)
        yield {"port": port, "scram": scram_pw, "md5": md5_pw}
    finally:
        as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(home, ignore_errors=True)


def gateway_for(e2e_tmp, name: str, url: str, password: str):
    work = e2e_tmp / name
    work.mkdir(parents=True)
    key = "qg_pg_signin_" + secrets.token_urlsafe(12)
    port, pg_port = s.free_port(), s.free_port()
    config = work / "querygate.toml"
    config.write_text(
        f'[server]\nbigquery_listen = "127.0.0.1:{port}"\npostgres_listen = "127.0.0.1:{pg_port}"\n\n'
        f'[store]\npath = "querygate.db"\n\n'
        + s.api_key_toml("human:dba", ["people"], s.sha256_hex(key))
        + f'[[sources]]\nname = "db"\nkind = "postgres"\nproject = "postgres"\nurl = "{url}"\n'
          f'password_env = "QG_UPSTREAM_PASSWORD"\ntls = "disable"\n\n'
          '[[rule]]\nname = "all"\nwho = ["group:people"]\naction = "allow"\n')
    env = dict(os.environ, NO_COLOR="1", QG_UPSTREAM_PASSWORD=password)
    server = s.Server(name=f"querygate-{name}", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=env, cwd=work)
    server.start()
    server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
    dsn = f"host=127.0.0.1 port={pg_port} dbname=postgres user=dba password={key} sslmode=disable"
    return server, dsn


@pytest.mark.parametrize("method", ["scram", "md5"])
def test_the_gateway_signs_in_with_its_own_password(e2e_tmp, cluster, method):
    user = "postgres" if method == "scram" else "md5user"
    url = f"postgresql://{user}@127.0.0.1:{cluster['port']}/postgres"
    server, dsn = gateway_for(e2e_tmp, f"signin-{method}", url, cluster[method])
    try:
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT current_user").fetchone() == (user,)
    finally:
        server.stop()
    server, dsn = gateway_for(e2e_tmp, f"signin-{method}-wrong", url, "not-the-password")
    try:
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(dsn)
        assert "refused querygate's sign-in" in str(refused.value) and "28P01" in str(refused.value)
        assert "not-the-password" not in server.log_text()
    finally:
        server.stop()


SNAKEOIL = Path("/etc/ssl/certs/ssl-cert-snakeoil.pem")


def machine_tls() -> bool:
    cp = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-Atc", "show ssl", "postgres"],
                        capture_output=True, text=True, timeout=30)
    return cp.stdout.strip() == "on" and SNAKEOIL.exists()


@pytest.mark.skipif(not machine_tls(), reason="the machine's PostgreSQL does not serve TLS with its snakeoil certificate")
@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_the_upstream_connection_is_encrypted_as_configured(e2e_tmp, mode):
    work = e2e_tmp / f"tls-{mode}"
    work.mkdir(parents=True)
    key = "qg_pg_tls_" + secrets.token_urlsafe(12)
    port, pg_port = s.free_port(), s.free_port()
    host = "localhost" if mode == "verify-full" else "127.0.0.1"
    extra = f'ca_file = "{SNAKEOIL}"\n' if mode == "verify-full" else ""
    config = work / "querygate.toml"
    config.write_text(
        f'[server]\nbigquery_listen = "127.0.0.1:{port}"\npostgres_listen = "127.0.0.1:{pg_port}"\n\n'
        f'[store]\npath = "querygate.db"\n\n'
        + s.api_key_toml("human:dba", ["people"], s.sha256_hex(key))
        + f'[[sources]]\nname = "db"\nkind = "postgres"\nproject = "postgres"\n'
          f'url = "postgresql://postgres@{host}:5432/postgres"\ntls = "{mode}"\n{extra}\n'
          '[[rule]]\nname = "all"\nwho = ["group:people"]\naction = "allow"\n')
    server = s.Server(name=f"querygate-tls-{mode}", argv=[str(s.default_gateway_bin()), "serve", "--config", str(config)],
                      log_path=work / "querygate.log", env=dict(os.environ, NO_COLOR="1"), cwd=work)
    server.start()
    try:
        server.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        dsn = f"host=127.0.0.1 port={pg_port} dbname=postgres user=dba password={key} sslmode=disable"
        with psycopg.connect(dsn) as c:
            assert c.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    finally:
        server.stop()
