#!/usr/bin/env bash
# querygate PostgreSQL front benchmark (not a test).
#
# pgbench's select-only workload (-S) over the simple query protocol and with prepared
# statements (-M prepared), at 1 client (added latency) and BENCH_CLIENTS clients
# (throughput), against the machine's PostgreSQL on 127.0.0.1:5432:
#   - directly,
#   - through pgbouncer in session mode (Debian's package, when installed),
#   - through querygate (every statement decided and durably audited before it runs).
# Prints a Markdown report and writes it to BENCH_RESULTS.
#
# Usage: bench/pg.sh
# Environment (defaults in brackets):
#   QUERYGATE_BIN     querygate binary [$CARGO_TARGET_DIR/release/querygate]
#   BENCH_DURATION    seconds per run [15]
#   BENCH_CLIENTS     clients of the throughput run [16]
#   BENCH_SCALE       pgbench scale [10]
#   BENCH_RESULTS     report file [bench/pg-results.md]
#   PGUSER            the superuser on 127.0.0.1:5432 that creates the bench database [postgres]
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/querygate/target}"
QG="${QUERYGATE_BIN:-$TARGET_DIR/release/querygate}"
DURATION="${BENCH_DURATION:-15}"
CLIENTS="${BENCH_CLIENTS:-16}"
SCALE="${BENCH_SCALE:-10}"
RESULTS="${BENCH_RESULTS:-$HERE/pg-results.md}"
SUPER="${PGUSER:-postgres}"
DB="qg_bench_$$"

log() { printf '[pg-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

[ -x "$QG" ] || { echo "no querygate binary at $QG (cargo build --release -p querygate)" >&2; exit 2; }
command -v pgbench >/dev/null || { echo "pgbench is needed (Debian: postgresql-client)" >&2; exit 2; }

T="$(mktemp -d /tmp/querygate-pgbench.XXXXXX)"
chmod 755 "$T"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  psql -h 127.0.0.1 -U "$SUPER" -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" postgres >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT

log "creating $DB (pgbench -i -s $SCALE)"
psql -h 127.0.0.1 -U "$SUPER" -q -c "CREATE DATABASE $DB" postgres
pgbench -h 127.0.0.1 -U "$SUPER" -i -s "$SCALE" -q "$DB" >/dev/null 2>&1

declare -A PORT USER PASS
PORT[direct]=5432; USER[direct]="$SUPER"; PASS[direct]=""
TARGETS=(direct)

if command -v pgbouncer >/dev/null; then
  PORT[pgbouncer]="$(free_port)"
  cat > "$T/pgbouncer.ini" <<EOF
[databases]
$DB = host=127.0.0.1 port=5432 dbname=$DB user=$SUPER
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
auth_type = trust
auth_file = $T/users.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
logfile = $T/pgbouncer/pgbouncer.log
pidfile = $T/pgbouncer/pgbouncer.pid
unix_socket_dir =
EOF
  mkdir -p "$T/pgbouncer"
  echo "\"$SUPER\" \"\"" > "$T/users.txt"
  chmod 644 "$T"/*.ini "$T"/users.txt
  if [ "$(id -u)" = 0 ]; then
    # pgbouncer does not run as root.
    chown postgres "$T/pgbouncer"
    runuser -u postgres -- pgbouncer "$T/pgbouncer.ini" >"$T/pgbouncer.out" 2>&1 &
  else
    pgbouncer "$T/pgbouncer.ini" >"$T/pgbouncer.out" 2>&1 &
  fi
  PIDS+=($!)
  USER[pgbouncer]="$SUPER"; PASS[pgbouncer]=""
  TARGETS+=(pgbouncer)
else
  log "pgbouncer is not installed (apt-get install pgbouncer): not measured"
fi

KEY="qg_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
SHA="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
PORT[querygate]="$(free_port)"
cat > "$T/querygate.toml" <<EOF
[server]
bigquery_listen = "127.0.0.1:$(free_port)"
postgres_listen = "127.0.0.1:${PORT[querygate]}"

[store]
path = "$T/querygate.db"

[[api_keys]]
identity = "agent:bench"
groups = ["agents"]
key_sha256 = "$SHA"

[[sources]]
name = "$DB"
kind = "postgres"
url = "postgresql://$SUPER@127.0.0.1:5432/$DB"
tls = "disable"

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select"]
action = "allow"
EOF
"$QG" serve --config "$T/querygate.toml" >"$T/querygate.log" 2>&1 &
QG_PID=$!
PIDS+=("$QG_PID")
USER[querygate]=agent; PASS[querygate]="$KEY"
TARGETS+=(querygate)
sleep 2

# Memory of idle client connections through a fresh querygate, before any load (each
# holds an upstream session, so fewer than the server's max_connections).
IDLE="${BENCH_IDLE:-60}"
rss() { awk '/VmRSS/ {print $2}' "/proc/$QG_PID/status"; }
before="$(rss)"
python3 - "${PORT[querygate]}" "$DB" "$KEY" "$IDLE" <<'PY' &
import socket, struct, sys, time
port, db, key, idle = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
socks = []
for _ in range(idle):
    s = socket.create_connection(("127.0.0.1", port))
    params = b"user\0agent\0database\0" + db.encode() + b"\0\0"
    s.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
    s.recv(9)
    pw = key.encode() + b"\0"
    s.sendall(b"p" + struct.pack("!i", 4 + len(pw)) + pw)
    got = b""
    while not got.endswith(b"Z\0\0\0\x05I"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("a connection was refused: " + got.decode("latin-1")[-200:])
        got += chunk
    socks.append(s)
print("ready", flush=True)
time.sleep(8)
PY
IDLE_PID=$!
sleep 6
after="$(rss)"
wait "$IDLE_PID" 2>/dev/null || true
per_conn=$(( (after - before) * 1024 / IDLE ))

# A 1M-row SELECT (about 110 MB of rows) straight from PostgreSQL and through querygate
# (every row passes the value detectors' gate): seconds each, and how much querygate's
# peak RSS (VmHWM) grew while it streamed.
BIG="SELECT n, repeat('x', 100) AS pad FROM generate_series(1, 1000000) n"
hwm() { awk '/VmHWM/ {print $2}' "/proc/$QG_PID/status"; }
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc; }
big_direct=$(timed psql -X -q -h 127.0.0.1 -p 5432 -U "$SUPER" -d "$DB" -c "$BIG")
hwm_before="$(hwm)"
big_qg=$(PGPASSWORD="$KEY" timed psql -X -q -h 127.0.0.1 -p "${PORT[querygate]}" -U agent -d "$DB" -c "$BIG")
hwm_after="$(hwm)"
log "1M rows: direct ${big_direct}s, querygate ${big_qg}s, peak RSS +$(( hwm_after - hwm_before )) KiB"

# A gateway's CPU time so far (user + system), in clock ticks: querygate's, or pgbouncer's
# (from its pidfile), so that the two gateways' cost per transaction compare.
gateway_pid() {
  case "$1" in
    querygate) echo "$QG_PID" ;;
    pgbouncer) cat "$T/pgbouncer/pgbouncer.pid" 2>/dev/null || true ;;
  esac
}
ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ="$(getconf CLK_TCK)"

# run TARGET MODE CLIENTS -> "tps p50_ms p99_ms cpu_us_per_tx" (CPU: the gateway's own, per
# transaction; "-" for the other targets)
run() {
  local t="$1" mode="$2" c="$3" j t0 t1
  j=$(( c < 2 ? c : 2 ))
  rm -f "$T"/log.*
  local pid; pid="$(gateway_pid "$t")"
  t0="$(ticks "$pid")"
  (cd "$T" && PGPASSWORD="${PASS[$t]}" pgbench -n -S -M "$mode" -c "$c" -j "$j" -T "$DURATION" \
     -h 127.0.0.1 -p "${PORT[$t]}" -U "${USER[$t]}" -l --log-prefix=log "$DB" >"$T/out" 2>&1) || {
       log "$t $mode c=$c failed: $(tail -3 "$T/out")"; echo "- - - -"; return; }
  t1="$(ticks "$pid")"
  local tps tx cpu="-"
  tps="$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$T/out" | head -1)"
  tx="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$T/out" | head -1)"
  if [ -n "$pid" ] && [ "${tx:-0}" -gt 0 ]; then
    cpu=$(( (t1 - t0) * 1000000 / HZ / tx ))
  fi
  # Per-transaction logs: the third field is the latency in microseconds.
  cat "$T"/log.* | awk '{print $3}' | sort -n | awk -v tps="$tps" -v cpu="$cpu" '
    { v[NR] = $1 }
    END { p50 = v[int(NR * 0.5) + 1] / 1000; p99 = v[int(NR * 0.99) + 1] / 1000;
          printf "%s %.3f %.3f %s\n", tps, p50, p99, cpu }'
}

declare -A R
for mode in simple prepared; do
  for c in 1 "$CLIENTS"; do
    for t in "${TARGETS[@]}"; do
      log "$t -M $mode -c $c: ${DURATION}s"
      R["$t/$mode/$c"]="$(run "$t" "$mode" "$c")"
      log "  ${R["$t/$mode/$c"]} (tps p50 p99 cpu_us/tx)"
    done
  done
done



{
  echo "# querygate PostgreSQL benchmark"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$HERE/.." rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) CPUs, PostgreSQL $(psql -h 127.0.0.1 -U "$SUPER" -Atc 'show server_version' postgres), pgbench -S, scale $SCALE, ${DURATION}s per row, all on 127.0.0.1 (pgbench included)."
  echo
  echo "| target | protocol | clients | tps | p50 ms | p99 ms | gateway CPU µs/tx |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  for mode in simple prepared; do
    for c in 1 "$CLIENTS"; do
      for t in "${TARGETS[@]}"; do
        read -r tps p50 p99 cpu <<<"${R["$t/$mode/$c"]}"
        echo "| $t | $mode | $c | $tps | $p50 | $p99 | $cpu |"
      done
    done
  done
  echo
  echo "Idle client connections through querygate: $per_conn bytes of RSS each ($IDLE connections, each with its upstream session)."
  echo
  echo "A 1M-row SELECT (\`$BIG\`, about 110 MB of rows) through psql: ${big_direct} s straight from PostgreSQL, ${big_qg} s through querygate, whose peak RSS grew by $(( hwm_after - hwm_before )) KiB while it streamed (from $hwm_before KiB)."
} | tee "$RESULTS"
