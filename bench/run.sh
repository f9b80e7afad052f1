#!/usr/bin/env bash
# querygate benchmark (not a test).
#
# Starts a canned-response BigQuery upstream (its own nginx instance) and, in
# one run, measures jobs.query with a 100-row result
#   - directly against the canned upstream,
#   - through nginx (Debian package) as a plain keepalive reverse proxy,
#   - through querygate (every request durably audited),
#   - through querygate's MCP front, as an execute_sql tool call (target "mcp"),
# at 1 connection (added latency) and at BENCH_CONNECTIONS connections
# (throughput), with wrk. Then pages a 1M-row result through querygate's
# getQueryResults (100 pages x 10,000 rows) while sampling querygate's RSS.
# Prints a Markdown report and writes it to bench/results.md.
#
# Usage: bench/run.sh [--build] [--no-querygate] [--help]
#   --build          run `cargo build --release -p querygate` (and its passthrough example) first
#   --no-querygate   only measure direct and nginx (plumbing check)
#
# Environment (defaults in brackets):
#   QUERYGATE_BIN       querygate binary [$CARGO_TARGET_DIR/release/querygate,
#                       CARGO_TARGET_DIR defaulting to ~/.cache/querygate/target]
#   BENCH_FLOOR_BIN     the floor: a pass-through proxy on querygate's own HTTP stack
#                       (crates/querygate/examples/passthrough.rs: axum + reqwest, no audit);
#                       measured when present [$CARGO_TARGET_DIR/release/examples/passthrough]
#   QUERYGATE_ARGS      querygate arguments; {config} is replaced by the config
#                       path [serve --config {config}]
#   BENCH_DURATION      seconds measured per target and concurrency [15]
#   BENCH_WARMUP        seconds of warm-up before each measurement [3]
#   BENCH_CONNECTIONS   connections of the throughput run [16]
#   BENCH_THREADS       wrk threads of the throughput run [2]
#   BENCH_UPSTREAM_WORKERS / BENCH_PROXY_WORKERS  nginx worker_processes [auto]
#   BENCH_NGINX_ACCESS_LOG  on|off: access log of the proxy nginx [on, as
#                       Debian's stock config]
#   BENCH_RESULTS       report file [bench/results.md]
#   BENCH_SKIP_RSS=1    skip the 1M-row paging run
#   BENCH_STRICT=1      exit 4 when a target is missed
#   BENCH_TMPDIR        where the temp dir (and querygate's store) goes; must
#                       be a real disk for the audit to be durable [$TMPDIR or /tmp]
#   BENCH_KEEP_TMP=1    keep the temp dir (configs, logs, raw wrk output)
#   BENCH_STORE_SYNC    querygate's [store] synchronous: full (fsync per commit) or
#                       normal (fsync at checkpoints) [full]
#   BENCH_RECORDING     querygate's [recording] enabled: true (the default: every
#                       session recorded, bodies included) or false [true]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

BUILD=0
NO_QG=0
for arg in "$@"; do
  case "$arg" in
    --build) BUILD=1 ;;
    --no-querygate) NO_QG=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

DURATION="${BENCH_DURATION:-15}"
WARMUP="${BENCH_WARMUP:-3}"
CONNS="${BENCH_CONNECTIONS:-16}"
THREADS="${BENCH_THREADS:-2}"
UP_WORKERS="${BENCH_UPSTREAM_WORKERS:-auto}"
PX_WORKERS="${BENCH_PROXY_WORKERS:-auto}"
ACCESS_LOG="${BENCH_NGINX_ACCESS_LOG:-on}"
RESULTS="${BENCH_RESULTS:-$HERE/results.md}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/querygate/target}"
QG_BIN="${QUERYGATE_BIN:-$CARGO_TARGET_DIR/release/querygate}"
FLOOR_BIN="${BENCH_FLOOR_BIN:-$CARGO_TARGET_DIR/release/examples/passthrough}"

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- tools ----
ensure_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  log "installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q "${missing[@]}" >&2 ||
    { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "${missing[@]}" >&2; } ||
    die "could not install ${missing[*]}"
}
ensure_tools
NGINX="$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)"

if [ "$BUILD" -eq 1 ]; then
  log "cargo build --release -p querygate (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p querygate && cargo build --release -p querygate --example passthrough) ||
    die "build failed"
fi

QG_MISSING=0
if [ "$NO_QG" -eq 0 ] && [ ! -x "$QG_BIN" ]; then
  log "WARNING: querygate binary not found at $QG_BIN (use --build or QUERYGATE_BIN); measuring direct and nginx only"
  QG_MISSING=1
  NO_QG=1
fi

# ------------------------------------------------------- temp + cleanup ----
T="$(mktemp -d "${BENCH_TMPDIR:-${TMPDIR:-/tmp}}/querygate-bench.XXXXXX")"
FSTYPE="$(stat -f -c %T "$T")"
if [ "$FSTYPE" = tmpfs ] || [ "$FSTYPE" = ramfs ]; then
  log "WARNING: $T is on $FSTYPE: fsync is free there, so the audit is not durable; set BENCH_TMPDIR to a disk"
fi
chmod 755 "$T" # nginx workers may run as another user when started as root
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP_TMP:-0}" = 1 ]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_pid() { # pid
  local pid="$1"
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

read -r UP_PORT PX_PORT QG_PORT FL_PORT MCP_PORT < <(python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
EOF
)
PROJECT="bench-project"
QPATH="/bigquery/v2/projects/$PROJECT/queries"
QBODY='{"query":"SELECT id, name, email, score FROM ds.t LIMIT 100","useLegacySql":false}'
KEY="qgbench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
KEY_SHA="$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
export QG_BENCH_KEY="$KEY"

# ------------------------------------------------------ canned upstream ----
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
# CPU busy % over one second before anything starts (other jobs skew numbers)
BUSY_START="$(python3 - <<'EOF'
import time
def snap():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait
t0, i0 = snap(); time.sleep(1); t1, i1 = snap()
print("%.0f" % (100.0 * (1 - (i1 - i0) / max(1, t1 - t0))))
EOF
)"
if [ "$BUSY_START" -gt 15 ]; then
  log "WARNING: CPUs ${BUSY_START}% busy before starting (load average $LOAD_START): another job is running, numbers will be skewed"
fi
log "generating canned responses (100-row jobs.query, 1M-row result in 100 pages) in $T"
mkdir -p "$T/tmp"
python3 "$HERE/gen_canned.py" "$T/canned"
chmod -R a+rX "$T/canned"
# fsync latency of the filesystem the audit store is on (context for "durable")
FSYNC_LINE="$(python3 - "$T/fsync-probe" <<'EOF'
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
lat = []
for _ in range(200):
    os.write(fd, b"x" * 256)
    t = time.perf_counter(); os.fsync(fd); lat.append((time.perf_counter() - t) * 1000)
os.close(fd); os.unlink(sys.argv[1])
lat.sort()
print("p50 %.3f ms, p99 %.3f ms" % (lat[len(lat) // 2], lat[int(len(lat) * 0.99)]))
EOF
)"
log "fsync of a 256-byte append on the store's filesystem: $FSYNC_LINE"

nginx_common() { # name
  cat <<EOF
daemon off;
pid $T/$1.pid;
error_log $T/$1-error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_http_common() { # name
  cat <<EOF
  default_type "application/json; charset=UTF-8";
  client_body_temp_path $T/tmp/$1-body;
  proxy_temp_path $T/tmp/$1-proxy;
  fastcgi_temp_path $T/tmp/$1-fastcgi;
  uwsgi_temp_path $T/tmp/$1-uwsgi;
  scgi_temp_path $T/tmp/$1-scgi;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
EOF
}

JOB_BODY='{"kind":"bigquery#job","etag":"bench","id":"bench-project:US.JOBID","selfLink":"http://127.0.0.1/bigquery/v2/projects/bench-project/jobs/JOBID?location=US","user_email":"bench@example.com","configuration":{"query":{"query":"SELECT * FROM big","useLegacySql":false,"priority":"INTERACTIVE"},"jobType":"QUERY"},"jobReference":{"projectId":"bench-project","jobId":"JOBID","location":"US"},"statistics":{"creationTime":"1700000000000","startTime":"1700000000100","endTime":"1700000001000","totalBytesProcessed":"123456789","query":{"totalBytesProcessed":"123456789","totalBytesBilled":"123731968","cacheHit":false,"statementType":"SELECT"}},"status":{"state":"DONE"}}'
JOB_INSERT_BODY="${JOB_BODY//JOBID/bench-1m}"
JOB_GET_BODY="${JOB_BODY//JOBID/'$1'}"

{
  echo "worker_processes $UP_WORKERS;"
  nginx_common upstream
  echo "http {"
  # log only requests the canned upstream could not answer (diagnostics)
  echo '  map $status $qg_bad_status { ~^[23] 0; default 1; }'
  echo "  access_log $T/upstream-unanswered.log combined if=\$qg_bad_status;"
  nginx_http_common upstream
  echo "  include $T/canned/canned_query.conf;"
  cat <<EOF
  server {
    listen 127.0.0.1:$UP_PORT backlog=4096;
    root $T/canned;
    # jobs.query: canned 100-row response, unique jobId per request
    location = /bigquery/v2/projects/$PROJECT/queries {
      if (\$request_method != POST) { return 405; }
      include $T/canned/canned_query_return.conf;
    }
    # getQueryResults: the 1M-row result, one static file per page
    location ~ ^/bigquery/v2/projects/$PROJECT/queries/[^/]+\$ {
      try_files /pages/page-\$arg_pageToken.json =404;
    }
    # jobs.insert: a DONE query job bench-1m
    location = /bigquery/v2/projects/$PROJECT/jobs {
      if (\$request_method != POST) { return 405; }
      return 200 '$JOB_INSERT_BODY';
    }
    # jobs.get: a DONE query job with the requested id
    location ~ ^/bigquery/v2/projects/$PROJECT/jobs/([^/]+)\$ {
      return 200 '$JOB_GET_BODY';
    }
    location / {
      return 404 '{"error":{"code":404,"message":"canned upstream: no route for \$request_method \$uri","status":"NOT_FOUND"}}';
    }
  }
}
EOF
} > "$T/upstream.conf"

{
  echo "worker_processes $PX_WORKERS;"
  nginx_common proxy
  echo "http {"
  if [ "$ACCESS_LOG" = on ]; then echo "  access_log $T/proxy-access.log;"; else echo "  access_log off;"; fi
  nginx_http_common proxy
  cat <<EOF
  upstream canned {
    server 127.0.0.1:$UP_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$PX_PORT backlog=4096;
    location / {
      proxy_pass http://canned;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} > "$T/proxy.conf"

start_nginx() { # name port
  "$NGINX" -t -q -p "$T" -c "$T/$1.conf" -e "$T/$1-error.log" >&2 || die "nginx config $1 invalid"
  "$NGINX" -p "$T" -c "$T/$1.conf" -e "$T/$1-error.log" >"$T/$1.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$2/bigquery/v2/projects/$PROJECT/jobs/ready" && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$T/$1.out" "$T/$1-error.log" >&2 2>/dev/null || true
  die "nginx $1 did not start"
}
log "starting canned upstream nginx on 127.0.0.1:$UP_PORT and proxy nginx on 127.0.0.1:$PX_PORT"
start_nginx upstream "$UP_PORT"
UP_PID="${PIDS[-1]}"
start_nginx proxy "$PX_PORT"
PX_PID="${PIDS[-1]}"

# ------------------------------------------------------------ querygate ----
FLOOR_PID=""
if [ -x "$FLOOR_BIN" ]; then
  log "starting the floor (pass-through on querygate's HTTP stack) on 127.0.0.1:$FL_PORT"
  "$FLOOR_BIN" "127.0.0.1:$FL_PORT" "http://127.0.0.1:$UP_PORT" >"$T/floor.log" 2>&1 &
  FLOOR_PID=$!
  PIDS+=("$FLOOR_PID")
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$FL_PORT/bigquery/v2/projects/$PROJECT/jobs/ready" && break
    sleep 0.05
  done
else
  log "no floor binary at $FLOOR_BIN (cargo build --release -p querygate --example passthrough); not measured"
fi

QG_PID=""
start_querygate() {
  local args=()
  if [ -n "${QUERYGATE_ARGS:-}" ]; then
    read -r -a args <<<"${QUERYGATE_ARGS//\{config\}/$T/querygate.toml}"
  else
    args=(serve --config "$T/querygate.toml")
  fi
  QUERYGATE_CONFIG="$T/querygate.toml" "$QG_BIN" "${args[@]}" >>"$T/querygate.log" 2>&1 &
  QG_PID=$!
  PIDS+=("$QG_PID")
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$QG_PORT/healthz")" = 200 ] && return 0
    kill -0 "$QG_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 40 "$T/querygate.log" >&2 || true
  return 1
}
show_diagnostics() {
  log "last lines of querygate's log:"
  tail -n 20 "$T/querygate.log" >&2 2>/dev/null || true
  if [ -s "$T/upstream-unanswered.log" ]; then
    log "requests the canned upstream did not answer with 2xx/3xx:"
    tail -n 10 "$T/upstream-unanswered.log" >&2
  fi
}

if [ "$NO_QG" -eq 0 ]; then
  cat >"$T/querygate.toml" <<EOF
[server]
bigquery_listen = "127.0.0.1:$QG_PORT"
mcp_listen = "127.0.0.1:$MCP_PORT"

[mcp]
max_rows = 100

[store]
path = "$T/querygate.db"
synchronous = "${BENCH_STORE_SYNC:-full}"

[recording]
enabled = ${BENCH_RECORDING:-true}

[[api_keys]]
identity = "agent:bench"
groups = ["agents"]
key_sha256 = "$KEY_SHA"

[[sources]]
name = "bench"
kind = "bigquery"
project = "$PROJECT"
endpoint = "http://127.0.0.1:$UP_PORT"
credentials = "none"
EOF
  log "starting querygate ($QG_BIN) on 127.0.0.1:$QG_PORT"
  if ! start_querygate; then
    log "WARNING: querygate did not become ready (GET /healthz); skipping it"
    QG_FAILED="querygate did not become ready"
    NO_QG=1
  fi
fi

# --------------------------------------------------------- sanity checks ----
declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT$QPATH"
  [nginx]="http://127.0.0.1:$PX_PORT$QPATH"
  [querygate]="http://127.0.0.1:$QG_PORT$QPATH"
  [floor]="http://127.0.0.1:$FL_PORT$QPATH"
  [mcp]="http://127.0.0.1:$MCP_PORT/mcp"
)
TARGETS=(direct nginx)
[ -n "$FLOOR_PID" ] && TARGETS+=(floor)
[ "$NO_QG" -eq 0 ] && TARGETS+=(querygate mcp)

# MCP sessions for the mcp target (initialize, then notifications/initialized), one per
# connection of the throughput run; the wrk script takes turns over them.
open_mcp_sessions() { # count
  local i sid sessions=()
  for i in $(seq "$1"); do
    sid="$(curl -s -D - -o /dev/null -X POST "${URL[mcp]}" -H "Authorization: Bearer $KEY" \
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
      --data '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}' |
      tr -d '\r' | sed -n 's/^[Mm]cp-[Ss]ession-[Ii]d: *//p')"
    [ -n "$sid" ] || return 1
    curl -s -o /dev/null -X POST "${URL[mcp]}" -H "Authorization: Bearer $KEY" -H "Mcp-Session-Id: $sid" \
      -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
      --data '{"jsonrpc":"2.0","method":"notifications/initialized"}'
    sessions+=("$sid")
  done
  export QG_BENCH_MCP_SESSIONS="${sessions[*]}"
}

check_mcp() { # -> 0 if an execute_sql tool call returned the 100 rows
  local out="$T/check-mcp.json" sid
  open_mcp_sessions "$CONNS" || { log "mcp: initialize gave no Mcp-Session-Id"; return 1; }
  sid="${QG_BENCH_MCP_SESSIONS%% *}"
  curl -s -o "$out" -X POST "${URL[mcp]}" -H "Authorization: Bearer $KEY" -H "Mcp-Session-Id: $sid" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    --data '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"execute_sql","arguments":{"sql":"SELECT id, name, email, score FROM ds.t LIMIT 100"}}}'
  python3 - "$out" <<'EOF'
import json, sys
body = open(sys.argv[1], "rb").read()
try:
    # In a session the answer comes as one server-sent event (`data: {...}`); stateless
    # servers may answer plain JSON.
    events = [l[5:].strip() for l in body.decode().splitlines() if l.startswith("data:") and l[5:].strip()]
    r = json.loads(events[-1] if events else body)["result"]
    assert not r.get("isError"), r
    rows = r["structuredContent"]["rows"]
    assert len(rows) == 100 and rows[99]["email"] == "user100@example.com", "%d rows" % len(rows)
    print("[bench] mcp: execute_sql OK (%d bytes)" % len(body), file=sys.stderr)
except Exception as e:
    print("[bench] mcp: execute_sql check FAILED: %s; body: %r" % (e, body[:400]), file=sys.stderr)
    sys.exit(1)
EOF
}

check_query() { # target -> 0 if a 100-row jobs.query response came back
  [ "$1" = mcp ] && { check_mcp; return; }
  local out="$T/check-$1.json" code
  code="$(curl -s -o "$out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $KEY" --data "$QBODY" "${URL[$1]}")" || true
  python3 - "$out" "$code" "$1" <<'EOF'
import json, sys
path, code, name = sys.argv[1:]
body = b""
try:
    body = open(path, "rb").read()
    d = json.loads(body)
    assert code == "200", "HTTP %s" % code
    assert d.get("jobComplete") is True, "jobComplete"
    assert len(d.get("rows", [])) == 100, "%d rows" % len(d.get("rows", []))
    assert str(d.get("totalRows")) == "100", "totalRows"
    assert d["rows"][99]["f"][2]["v"] == "user100@example.com", "row content"
    print("[bench] %s: jobs.query OK (%d bytes, jobId %s)" % (name, len(body), d["jobReference"]["jobId"]), file=sys.stderr)
except Exception as e:
    print("[bench] %s: jobs.query check FAILED: %s; body: %r" % (name, e, body[:400]), file=sys.stderr)
    sys.exit(1)
EOF
}
CHECKED=()
for t in "${TARGETS[@]}"; do
  if check_query "$t"; then
    CHECKED+=("$t")
  elif [ "$t" = querygate ]; then
    show_diagnostics
    QG_FAILED="jobs.query through querygate failed the sanity check"
  elif [ "$t" = floor ] || [ "$t" = mcp ]; then
    log "WARNING: $t failed the sanity check; not measured"
  else
    die "$t jobs.query check failed"
  fi
done
TARGETS=("${CHECKED[@]}")

# ------------------------------------------------------------------ load ----
declare -A RPS P50 P99 P90 ERRS CPU_US CORES
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { # pid -> utime+stime of it and its children (nginx workers), in ticks
  local p total=0 f
  for p in "$1" $(pgrep -P "$1" || true); do
    f="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    f="${f##*) }" # fields from 3 on; utime, stime are fields 14, 15
    read -r -a f <<<"$f"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
QG_REQUESTS_SENT=1 # the sanity check above
us_to_ms() { awk -v x="$1" 'BEGIN { printf "%.3f", x / 1000 }'; }

script_of() { # target -> its wrk script
  if [ "$1" = mcp ]; then echo mcp_call.lua; else echo jobs_query.lua; fi
}

run_wrk() { # target conns threads
  local t="$1" c="$2" th="$3" raw line k v
  local -A kv=()
  log "wrk $t c=$c: ${WARMUP}s warm-up + ${DURATION}s"
  wrk -t"$th" -c"$c" -d"${WARMUP}s" --timeout 5s --latency -s "$HERE/$(script_of "$t")" "${URL[$t]}" \
    >"$T/wrk-$t-c$c-warmup.txt" 2>&1 || true
  line="$(grep '^QGBENCH' "$T/wrk-$t-c$c-warmup.txt" || true)"
  if [ "$t" = querygate ]; then
    QG_REQUESTS_SENT=$((QG_REQUESTS_SENT + $(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$line" | head -1 | grep . || echo 0)))
  fi
  raw="$T/wrk-$t-c$c.txt"
  local cpu_pid cpu0 cpu1
  case "$t" in direct) cpu_pid="$UP_PID" ;; nginx) cpu_pid="$PX_PID" ;; floor) cpu_pid="$FLOOR_PID" ;; *) cpu_pid="$QG_PID" ;; esac
  cpu0="$(cpu_ticks "$cpu_pid")"
  wrk -t"$th" -c"$c" -d"${DURATION}s" --timeout 5s --latency -s "$HERE/$(script_of "$t")" "${URL[$t]}" \
    >"$raw" 2>&1 || { cat "$raw" >&2; die "wrk failed for $t c=$c"; }
  line="$(grep '^QGBENCH' "$raw")" || { cat "$raw" >&2; die "no result line from wrk for $t"; }
  for k in ${line#QGBENCH }; do kv[${k%%=*}]="${k#*=}"; done
  if [ "$t" = querygate ]; then QG_REQUESTS_SENT=$((QG_REQUESTS_SENT + kv[requests])); fi
  RPS[$t,$c]="$(awk -v n="${kv[requests]}" -v d="${kv[duration_us]}" 'BEGIN { printf "%.0f", n / (d / 1e6) }')"
  P50[$t,$c]="$(us_to_ms "${kv[p50_us]}")"
  P90[$t,$c]="$(us_to_ms "${kv[p90_us]}")"
  P99[$t,$c]="$(us_to_ms "${kv[p99_us]}")"
  ERRS[$t,$c]=$((kv[err_connect] + kv[err_read] + kv[err_write] + kv[err_status] + kv[err_timeout]))
  cpu1="$(cpu_ticks "$cpu_pid")"
  # CPU of the target's own processes: per request, and cores busy on average
  CPU_US[$t,$c]="$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="${kv[requests]}" 'BEGIN { printf "%.0f", d / hz * 1e6 / n }')"
  CORES[$t,$c]="$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v us="${kv[duration_us]}" 'BEGIN { printf "%.2f", d / hz / (us / 1e6) }')"
  log "  $t c=$c: ${RPS[$t,$c]} req/s, p50 ${P50[$t,$c]} ms, p99 ${P99[$t,$c]} ms, errors ${ERRS[$t,$c]}"
  if [ "${ERRS[$t,$c]}" -ne 0 ]; then
    log "  WARNING: $t c=$c had errors: $line"
    if [ "$t" = querygate ]; then show_diagnostics; fi
  fi
}

for c in 1 "$CONNS"; do
  th="$THREADS"
  [ "$c" -lt "$th" ] && th="$c"
  for t in "${TARGETS[@]}"; do run_wrk "$t" "$c" "$th"; done
done

# -------------------------------------------------------------- audit -----
AUDIT_LINE=""
AUDIT_ROWS=""
if [[ " ${TARGETS[*]} " == *" querygate "* ]]; then
  # querygate's store is SQLite; count the rows of its audit table(s).
  AUDIT_OUT="$(python3 - "$T/querygate.db" <<'EOF'
import os, sqlite3, sys
path = sys.argv[1]
try:
    if not os.path.isfile(path):
        raise RuntimeError("%s is not a file" % path)
    c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
    tabs = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    counts = [(t, c.execute('SELECT count(*) FROM "%s"' % t).fetchone()[0]) for t in tabs if "audit" in t.lower()]
    if not counts:
        print("")
        print("no table named *audit* (tables: %s)" % ", ".join(tabs))
        sys.exit(0)
    desc = "; ".join("%s: %d rows" % tc for tc in counts)
    audited = sum(n for _, n in counts)
    try:  # querygate's audit_log: one JSON record per phase of a request
        done = c.execute("SELECT count(DISTINCT json_extract(record, '$.request_id')) FROM audit_log "
                         "WHERE json_extract(record, '$.phase') = 'completed' "
                         "AND json_extract(record, '$.method') = 'jobs.query'").fetchone()[0]
        audited = done
        desc += ", %d distinct jobs.query requests with a 'completed' record" % done
    except sqlite3.Error:
        pass
    print(audited)
    print(desc)
except Exception as e:
    print("")
    print("store not readable as SQLite (%s)" % e)
EOF
)"
  AUDIT_ROWS="$(sed -n 1p <<<"$AUDIT_OUT")"
  AUDIT_LINE="$(sed -n 2p <<<"$AUDIT_OUT")"
  log "audit store: $AUDIT_LINE (requests completed through querygate: $QG_REQUESTS_SENT)"
fi

# ------------------------------------------------- 1M-row paging + RSS ----
RSS_JSON=""
DIRECT_PAGING_JSON=""
if [ "${BENCH_SKIP_RSS:-0}" != 1 ]; then
  log "paging the 1M-row result directly from the canned upstream (baseline)"
  DIRECT_PAGING_JSON="$(python3 "$HERE/page_rss.py" --port "$UP_PORT")" ||
    { echo "$DIRECT_PAGING_JSON" >&2; die "paging the canned upstream directly failed"; }
  if [[ " ${TARGETS[*]} " == *" querygate "* ]]; then
    log "restarting querygate (fresh process, so VmHWM covers only the paging run)"
    stop_pid "$QG_PID"
    if start_querygate; then
      log "paging the 1M-row result through querygate, sampling RSS of pid $QG_PID"
      RSS_JSON="$(python3 "$HERE/page_rss.py" --port "$QG_PORT" --key "$KEY" --pid "$QG_PID")" || show_diagnostics
      log "  $RSS_JSON"
    else
      RSS_JSON='{"ok": false, "errors": ["querygate did not restart"]}'
    fi
  fi
fi

# --------------------------------------------------------------- report ----
jget() { # json key
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); v=d.get(sys.argv[2]); print("" if v is None else ("; ".join(v) if isinstance(v, list) else v))' "$1" "$2"
}
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", 100 * a / b; else print "n/a" }'; }
verdict() { # value op limit
  awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { ok = (op == "le") ? (v <= l) : (v >= l); print ok ? "PASS" : "MISS" }'
}

MISSED=0
QG_NOTE=""
case "$QG_BIN" in */debug/*) QG_NOTE=" (debug build: numbers are not meaningful)" ;; esac
CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)"
GITREV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo none)"
[ -n "$(git -C "$REPO" status --porcelain 2>/dev/null | head -1)" ] && GITREV="$GITREV+dirty"

report() {
  echo "# querygate benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $GITREV, $(nproc) CPUs ($CPU), Linux $(uname -r)."
  echo "Before the run: CPUs ${BUSY_START}% busy, load average $LOAD_START (anything else busy on the machine skews the numbers)."
  echo "fsync after a 256-byte append on the store's filesystem ($FSTYPE on $(df -P "$T" | awk 'NR == 2 { print $1 }')): $FSYNC_LINE."
  echo "$("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | awk '{print $1" "$2}'), all on 127.0.0.1 on this one machine (load generator included)."
  if [[ " ${TARGETS[*]} " == *" querygate "* ]]; then
    echo "querygate: \`$QG_BIN\`$QG_NOTE."
  elif [ "$QG_MISSING" = 1 ]; then
    echo "querygate: **not measured**, no binary at \`$QG_BIN\` (run with \`--build\`)."
  elif [ -n "${QG_FAILED:-}" ]; then
    echo "querygate: **not measured**, $QG_FAILED (log in the run's temp dir; BENCH_KEEP_TMP=1 keeps it)."
  else
    echo "querygate: not measured (--no-querygate)."
  fi
  echo
  echo "jobs.query (POST, 100-row result, $(wc -c <"$T/canned/query_response.json") bytes), wrk, ${WARMUP} s warm-up then ${DURATION} s per row."
  echo "Upstream: nginx, canned response, $UP_WORKERS workers. nginx proxy: $PX_WORKERS workers, keepalive to upstream, access log $ACCESS_LOG."
  echo
  echo "| target | connections | req/s | p50 ms | p90 ms | p99 ms | errors | CPU µs/req | cores busy |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  local c t
  for c in 1 "$CONNS"; do
    for t in "${TARGETS[@]}"; do
      echo "| $t | $c | ${RPS[$t,$c]} | ${P50[$t,$c]} | ${P90[$t,$c]} | ${P99[$t,$c]} | ${ERRS[$t,$c]} | ${CPU_US[$t,$c]} | ${CORES[$t,$c]} |"
    done
  done
  echo
  echo "CPU µs/req and cores busy: CPU time of the target's own processes during the measured run (direct: the canned upstream nginx; nginx: the proxy nginx; floor: the pass-through; querygate: querygate), not counting the upstream, wrk or anything else."
  if [[ " ${TARGETS[*]} " == *" floor "* ]]; then
    echo
    echo "floor: \`$FLOOR_BIN\`, a reverse proxy on querygate's own HTTP stack (axum/hyper server, reqwest client, tokio) doing nothing else: no authentication, analysis, audit or recording. What querygate adds beyond it is querygate's own work."
  fi
  echo
  echo "| comparison | value | target | |"
  echo "| --- | ---: | ---: | --- |"
  for c in 1 "$CONNS"; do
    echo "| nginx − direct p50, c=$c | $(diff_ms "${P50[nginx,$c]}" "${P50[direct,$c]}") ms | | |"
    echo "| nginx − direct p99, c=$c | $(diff_ms "${P99[nginx,$c]}" "${P99[direct,$c]}") ms | | |"
  done
  echo "| nginx / direct req/s, c=$CONNS | $(pct "${RPS[nginx,$CONNS]}" "${RPS[direct,$CONNS]}") % | | |"
  if [[ " ${TARGETS[*]} " == *" floor "* ]]; then
    echo "| floor / nginx req/s, c=$CONNS | $(pct "${RPS[floor,$CONNS]}" "${RPS[nginx,$CONNS]}") % | | |"
    echo "| floor − direct p50, c=1 | $(diff_ms "${P50[floor,1]}" "${P50[direct,1]}") ms | | |"
    echo "| floor − direct p99, c=1 | $(diff_ms "${P99[floor,1]}" "${P99[direct,1]}") ms | | |"
    if [[ " ${TARGETS[*]} " == *" querygate "* ]]; then
      echo "| querygate / floor req/s, c=$CONNS | $(pct "${RPS[querygate,$CONNS]}" "${RPS[floor,$CONNS]}") % | | |"
      echo "| querygate − floor CPU µs/req, c=$CONNS | $((CPU_US[querygate,$CONNS] - CPU_US[floor,$CONNS])) µs | | |"
    fi
  fi
  if [[ " ${TARGETS[*]} " == *" querygate "* ]]; then
    local d v
    for c in 1 "$CONNS"; do
      d="$(diff_ms "${P50[querygate,$c]}" "${P50[direct,$c]}")"
      v="$(verdict "$d" le 0.5)"; [ "$c" = 1 ] && [ "$v" = MISS ] && MISSED=1
      echo "| querygate − direct p50, c=$c | $d ms | ≤ +0.5 ms | $([ "$c" = 1 ] && echo "**$v**" || echo "($v)") |"
      d="$(diff_ms "${P99[querygate,$c]}" "${P99[direct,$c]}")"
      v="$(verdict "$d" le 2)"; [ "$c" = 1 ] && [ "$v" = MISS ] && MISSED=1
      echo "| querygate − direct p99, c=$c | $d ms | ≤ +2 ms | $([ "$c" = 1 ] && echo "**$v**" || echo "($v)") |"
    done
    v="$(pct "${RPS[querygate,1]}" "${RPS[nginx,1]}")"
    echo "| querygate / nginx req/s, c=1 | $v % | | |"
    v="$(pct "${RPS[querygate,$CONNS]}" "${RPS[nginx,$CONNS]}")"
    local vv; vv="$(verdict "$v" ge 60)"; [ "$vv" = MISS ] && MISSED=1
    echo "| querygate / nginx req/s, c=$CONNS | $v % | ≥ 60 % | **$vv** |"
    if [[ " ${TARGETS[*]} " == *" mcp "* ]]; then
      for c in 1 "$CONNS"; do
        echo "| mcp / querygate (REST) req/s, c=$c | $(pct "${RPS[mcp,$c]}" "${RPS[querygate,$c]}") % | | |"
        echo "| mcp − querygate (REST) p50, c=$c | $(diff_ms "${P50[mcp,$c]}" "${P50[querygate,$c]}") ms | | |"
        echo "| mcp − querygate (REST) CPU µs/req, c=$c | $((CPU_US[mcp,$c] - CPU_US[querygate,$c])) µs | | |"
      done
    fi
    echo
    echo "mcp: the same query as an \`execute_sql\` tool call (JSON-RPC over Streamable HTTP, $CONNS sessions, each answer one server-sent event) through querygate's MCP front: decoded, run through the same pipeline as jobs.query (audited, recorded) and rendered as \`structuredContent\` rows plus a text table."
    echo "Added latency is judged at 1 connection (c=$CONNS shown in brackets, it mostly measures CPU contention on $(nproc) cores); throughput at $CONNS connections."
    local av="**not verified**"
    if [ -n "$AUDIT_ROWS" ]; then
      if [ "$AUDIT_ROWS" -ge "$QG_REQUESTS_SENT" ]; then av="**PASS**"; else av="**MISS**"; MISSED=1; fi
    fi
    echo "Audit store after the load runs: $AUDIT_LINE, against $QG_REQUESTS_SENT requests completed through querygate (sanity check, warm-ups and runs; requests still in flight when wrk stopped may add a few rows): every request audited $av."
  fi
  echo
  echo "getQueryResults, 1M rows (100 pages × 10,000 rows, $(du -sm "$T/canned/pages" | cut -f1) MB of JSON), one client, one connection:"
  echo
  if [ -n "$DIRECT_PAGING_JSON" ]; then
    echo "- direct: $(jget "$DIRECT_PAGING_JSON" pages) pages, $(jget "$DIRECT_PAGING_JSON" rows) rows in $(jget "$DIRECT_PAGING_JSON" paging_s) s, $(jget "$DIRECT_PAGING_JSON" pages_per_s) pages/s ($(jget "$DIRECT_PAGING_JSON" mb_per_s) MB/s, the Python client's JSON parsing included)"
  else
    echo "- skipped (BENCH_SKIP_RSS=1)"
  fi
  if [ -n "$RSS_JSON" ]; then
    if [ "$(jget "$RSS_JSON" ok)" = True ]; then
      local peak; peak="$(jget "$RSS_JSON" vm_hwm_mb)"
      local pv; pv="$(verdict "$peak" le 64)"; [ "$pv" = MISS ] && MISSED=1
      echo "- querygate: $(jget "$RSS_JSON" pages) pages, $(jget "$RSS_JSON" rows) rows in $(jget "$RSS_JSON" paging_s) s, $(jget "$RSS_JSON" pages_per_s) pages/s ($(jget "$RSS_JSON" mb_per_s) MB/s)"
      echo "- **querygate peak RSS (VmHWM) $peak MB** (target ≤ 64 MB: **$pv**); RSS before paging $(jget "$RSS_JSON" rss_before_mb) MB, max sampled $(jget "$RSS_JSON" rss_max_sampled_mb) MB, after $(jget "$RSS_JSON" rss_after_mb) MB"
    else
      MISSED=1
      echo "- querygate: **FAILED**: $(jget "$RSS_JSON" errors) (VmHWM $(jget "$RSS_JSON" vm_hwm_mb) MB)"
    fi
  fi
}

report >"$T/report.md" # not in a subshell: report() sets MISSED
cat "$T/report.md"
cp "$T/report.md" "$RESULTS"
log "report written to $RESULTS"

if [ "$QG_MISSING" = 1 ]; then exit 3; fi
if [ -n "${QG_FAILED:-}" ]; then exit 1; fi
if [ -n "$RSS_JSON" ] && [ "$(jget "$RSS_JSON" ok)" != True ]; then exit 1; fi
if [ "${BENCH_STRICT:-0}" = 1 ] && [ "$MISSED" = 1 ]; then exit 4; fi
exit 0
