#!/usr/bin/env python3
"""Benchmark of the `local` source: the embedded engine through the gateway vs called in-process.

Stdlib only. Steps:
  1. starts `querygate demo --dir DIR` (generates the 1.2M-row shop.events at first start);
  2. through the gateway (the privacy group's key: no masking, no approval), over HTTP as the
     clients do it: a full scan (`SELECT * FROM shop.events`, every row paged out through
     getQueryResults) and an aggregate (GROUP BY over shop.events), best of N each;
  3. the same two queries with the engine called in-process (the `inprocess` example of
     querygate-local: no HTTP, no pipeline, same paging and JSON), best of N;
  4. pages `SELECT *` of shop.events (1.2M rows) through tabledata.list while sampling the gateway
     process's VmRSS/VmHWM.
Prints a Markdown report (and writes it to bench/local-results.md).

  bench/local.py --bin target/release/querygate --inprocess target/release/examples/inprocess
"""
import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

FULL_SCAN = "SELECT * FROM shop.events"
AGGREGATE = ("SELECT page, device, COUNT(*) AS views, SUM(duration_ms) AS ms, MAX(event_time) AS last_seen "
             "FROM shop.events GROUP BY page, device")
TOKEN = re.compile(rb'"pageToken":"(\d+)"')


def status_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


class Gateway:
    def __init__(self, endpoint, key):
        u = urllib.parse.urlparse(endpoint)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=self.headers)
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}: {data[:500]!r}")
        return data

    def query_all(self, sql):
        """jobs.insert, then getQueryResults page by page (pageToken) until the last; rows seen."""
        job = json.loads(self.call("POST", "/bigquery/v2/projects/demo/jobs", {
            "configuration": {"query": {"query": sql, "useLegacySql": False}}}))
        job_id = job["jobReference"]["jobId"]
        rows, token = 0, None
        while True:
            q = "" if token is None else f"?pageToken={token.decode()}"
            page = self.call("GET", f"/bigquery/v2/projects/demo/queries/{job_id}{q}")
            rows += page.count(b'{"f":[')
            m = TOKEN.search(page[-200:]) or TOKEN.search(page)
            if not m:
                return rows
            token = m.group(1)

    def table_all(self, dataset, table, on_page=None):
        rows, token = 0, None
        while True:
            q = "" if token is None else f"?pageToken={token.decode()}"
            page = self.call("GET", f"/bigquery/v2/projects/demo/datasets/{dataset}/tables/{table}/data{q}")
            rows += page.count(b'{"f":[')
            if on_page:
                on_page()
            m = TOKEN.search(page[-200:]) or TOKEN.search(page)
            if not m:
                return rows
            token = m.group(1)


def best_of(n, fn):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.monotonic()
        out = fn()
        best = min(best, time.monotonic() - t)
    return best, out


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/querygate/target"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(target, "release", "querygate"))
    ap.add_argument("--inprocess", default=os.path.join(target, "release", "examples", "inprocess"))
    ap.add_argument("--dir", default=None, help="demo directory (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    workdir = args.dir or tempfile.mkdtemp(prefix="querygate-bench-local-")
    demo_json = os.path.join(workdir, "demo.json")
    if os.path.exists(demo_json):
        os.unlink(demo_json)
    os.makedirs(workdir, exist_ok=True)
    log = open(os.path.join(os.path.dirname(os.path.abspath(workdir)), os.path.basename(workdir) + ".log"), "wb")
    proc = subprocess.Popen([args.bin, "demo", "--dir", workdir], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, QUERYGATE_LOG="warn", NO_COLOR="1"))
    try:
        t0 = time.monotonic()
        while not os.path.exists(demo_json):
            if proc.poll() is not None:
                sys.exit(f"querygate demo exited early (see {log.name})")
            time.sleep(0.2)
        info = json.load(open(demo_json))
        gw = Gateway(info["bigquery_endpoint"], info["keys"]["privacy"])
        while True:
            try:
                gw.conn.request("GET", "/healthz")
                if gw.conn.getresponse().read() == b"ok":
                    break
            except OSError:
                gw.conn.close()
                time.sleep(0.2)
        ready_s = time.monotonic() - t0
        rss_idle = status_kb(proc.pid)
        gw_full, rows_full = best_of(args.repeats, lambda: gw.query_all(FULL_SCAN))
        gw_agg, rows_agg = best_of(args.repeats, lambda: gw.query_all(AGGREGATE))
        assert rows_full == 1_200_000, rows_full
        assert rows_agg == 21, rows_agg

        peak = {"rss": 0}

        def sample():
            peak["rss"] = max(peak["rss"], status_kb(proc.pid)["VmRSS"])

        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                sample()
                time.sleep(0.02)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        t = time.monotonic()
        rows_td = gw.table_all("shop", "events", on_page=sample)
        td_s = time.monotonic() - t
        stop.set()
        th.join()
        assert rows_td == 1_200_000, rows_td
        hwm = status_kb(proc.pid)["VmHWM"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
    if os.path.exists(args.inprocess):
        inproc = json.loads(subprocess.run([args.inprocess, workdir, str(args.repeats)], check=True,
                                           capture_output=True, text=True).stdout)
        full_in, agg_in = inproc["full_scan_s"], inproc["aggregate_s"]
        cells = (f"{full_in:.2f} s", f"{gw_full / full_in:.2f}×", f"{agg_in * 1000:.0f} ms", f"{gw_agg / agg_in:.2f}×")
    else:
        print(f"(no in-process baseline: {args.inprocess} missing; build it with "
              "cargo build -p querygate-local --examples)", file=sys.stderr)
        cells = ("not measured", "", "not measured", "")
    lines = [
        "| | through the gateway (HTTP, pipeline, audit) | engine in-process | ratio |",
        "|---|---|---|---|",
        f"| full scan: `SELECT *` of 1.2M rows, every page read | {gw_full:.2f} s | {cells[0]} | {cells[1]} |",
        f"| aggregate: GROUP BY over 1.2M rows | {gw_agg * 1000:.0f} ms | {cells[2]} | {cells[3]} |",
        "",
        f"tabledata.list of shop.events (1.2M rows, {rows_td} read) through the gateway in {td_s:.1f} s: "
        f"peak RSS {peak['rss'] / 1024:.0f} MiB while paging (idle after start: {rss_idle['VmRSS'] / 1024:.0f} MiB; "
        f"VmHWM of the whole run, the full scans above included: {hwm / 1024:.0f} MiB). "
        f"First start to ready: {ready_s:.1f} s. Best of {args.repeats}; binary {args.bin}.",
    ]
    report = "\n".join(lines)
    print(report)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "local-results.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
