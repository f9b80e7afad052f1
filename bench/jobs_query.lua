-- wrk script for bench/run.sh: BigQuery jobs.query (POST .../queries).
-- The URL (with path) is given on wrk's command line; the API key comes from
-- QG_BENCH_KEY. done() prints one machine-readable line that run.sh parses.
local key = os.getenv("QG_BENCH_KEY") or "bench-key"

wrk.method = "POST"
wrk.body = '{"query":"SELECT id, name, email, score FROM ds.t LIMIT 100","useLegacySql":false}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "QGBENCH requests=%d duration_us=%d bytes=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f mean_us=%.1f max_us=%.1f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
