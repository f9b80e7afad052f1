#!/usr/bin/env python3
"""Page a 1M-row result through getQueryResults and sample a process's RSS.

Used by bench/run.sh. Stdlib only. Steps:
  1. jobs.insert (POST /bigquery/v2/projects/P/jobs) for job bench-1m, so the
     gateway knows the job belongs to this identity;
  2. getQueryResults (GET /bigquery/v2/projects/P/queries/JOB?maxResults=N
     [&pageToken=T]) following the pageToken each response returns, until a
     response carries none; every page is parsed and its ids checked;
  3. meanwhile a thread samples VmRSS/VmHWM of --pid from /proc/PID/status.
Prints one JSON object on stdout; exit status 1 if anything was wrong.
"""
import argparse
import http.client
import json
import sys
import threading
import time
import urllib.parse

PROJECT = "bench-project"


def read_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])  # kB
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_rss_kb = 0
        self.hwm_kb = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self):
        s = read_status(self.pid)
        if s:
            self.samples += 1
            self.max_rss_kb = max(self.max_rss_kb, s.get("VmRSS", 0))
            self.hwm_kb = max(self.hwm_kb, s.get("VmHWM", 0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--key", default="")
    ap.add_argument("--pid", type=int, default=0, help="process to sample (0: none)")
    ap.add_argument("--job-id", default="bench-1m")
    ap.add_argument("--max-results", type=int, default=10000)
    ap.add_argument("--expect-rows", type=int, default=1000000)
    ap.add_argument("--interval", type=float, default=0.005)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    headers = {"Content-Type": "application/json"}
    if a.key:
        headers["Authorization"] = "Bearer " + a.key
    conn = http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
    result = {"ok": False}
    errors = []

    def request(method, path, body=None):
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data

    sampler = None
    if a.pid:
        base = read_status(a.pid)
        result["rss_before_mb"] = round(base.get("VmRSS", 0) / 1024, 1)
        sampler = Sampler(a.pid, a.interval)
        sampler.start()

    t0 = time.monotonic()
    try:
        insert = {
            "jobReference": {"projectId": PROJECT, "jobId": a.job_id},
            "configuration": {"query": {"query": "SELECT * FROM big", "useLegacySql": False}},
        }
        st, data = request("POST", "/bigquery/v2/projects/%s/jobs" % PROJECT, json.dumps(insert))
        if st != 200:
            raise RuntimeError("jobs.insert: HTTP %d: %s" % (st, data[:300]))
        job = json.loads(data)
        job_id = (job.get("jobReference") or {}).get("jobId") or a.job_id
        result["job_id"] = job_id

        t1 = time.monotonic()
        token, pages, rows, nbytes, next_id = None, 0, 0, 0, 0
        total_rows = None
        while True:
            q = {"maxResults": str(a.max_results)}
            if token is not None:
                q["pageToken"] = token
            path = "/bigquery/v2/projects/%s/queries/%s?%s" % (
                PROJECT, urllib.parse.quote(job_id), urllib.parse.urlencode(q))
            st, data = request("GET", path)
            if st != 200:
                raise RuntimeError("getQueryResults page %d: HTTP %d: %s" % (pages, st, data[:300]))
            nbytes += len(data)
            page = json.loads(data)
            prow = page.get("rows") or []
            if prow:
                first = int(prow[0]["f"][0]["v"])
                last = int(prow[-1]["f"][0]["v"])
                if first != next_id or last != next_id + len(prow) - 1:
                    errors.append("page %d: ids %d..%d, expected from %d" % (pages, first, last, next_id))
                next_id = last + 1
            rows += len(prow)
            pages += 1
            total_rows = page.get("totalRows", total_rows)
            token = page.get("pageToken")
            del page, prow, data
            if not token:
                break
            if pages > 100000:
                raise RuntimeError("too many pages")
        t2 = time.monotonic()
        result.update({
            "pages": pages, "rows": rows, "bytes": nbytes, "total_rows": total_rows,
            "paging_s": round(t2 - t1, 3),
            "pages_per_s": round(pages / (t2 - t1), 2) if t2 > t1 else None,
            "rows_per_s": round(rows / (t2 - t1)) if t2 > t1 else None,
            "mb_per_s": round(nbytes / 1048576 / (t2 - t1), 1) if t2 > t1 else None,
        })
        if rows != a.expect_rows:
            errors.append("got %d rows, expected %d" % (rows, a.expect_rows))
    except Exception as e:  # report, don't trace
        errors.append("%s: %s" % (type(e).__name__, e))
    finally:
        if sampler:
            sampler.stop.set()
            sampler.join()
            sampler.sample()
            result["rss_max_sampled_mb"] = round(sampler.max_rss_kb / 1024, 1)
            result["vm_hwm_mb"] = round(sampler.hwm_kb / 1024, 1)
            result["rss_after_mb"] = round(read_status(a.pid).get("VmRSS", 0) / 1024, 1)
            result["samples"] = sampler.samples
    result["elapsed_s"] = round(time.monotonic() - t0, 3)
    result["errors"] = errors
    result["ok"] = not errors
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
