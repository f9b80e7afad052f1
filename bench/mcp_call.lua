-- wrk script for bench/run.sh: an MCP tools/call of execute_sql (the same query as
-- jobs_query.lua) through querygate's MCP front. The API key comes from QG_BENCH_KEY and
-- the MCP sessions (opened by run.sh with initialize) from QG_BENCH_MCP_SESSIONS, spaces
-- between them; requests take turns over the sessions, each with its own JSON-RPC id.
-- done() prints the same machine-readable line as jobs_query.lua.
local key = os.getenv("QG_BENCH_KEY") or "bench-key"
local sessions = {}
for s in string.gmatch(os.getenv("QG_BENCH_MCP_SESSIONS") or "", "%S+") do
  sessions[#sessions + 1] = s
end
local n = 0
local base = 0

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
  base = math.random(1, 1000000) * 1000000
end

function request()
  n = n + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json, text/event-stream",
    ["Authorization"] = "Bearer " .. key,
    ["Mcp-Session-Id"] = sessions[(n % #sessions) + 1],
  }
  local body = string.format(
    '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"execute_sql",' ..
    '"arguments":{"sql":"SELECT id, name, email, score FROM ds.t LIMIT 100"}}}', base + n)
  return wrk.format("POST", nil, headers, body)
end

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
