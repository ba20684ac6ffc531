#!/usr/bin/env bash
# The Durable Streams servers side by side (issue 22 item 7): livereplay
# serve, the `durable-streams` crate, the `durable-streams-server` crate,
# the Node reference server and a bare axum 204 handler (the HTTP floor),
# driven by one client (examples/ds_load.rs) with the same workloads, on
# this machine, in one run: first every server acknowledging an append
# only once it is on disk (fsync'd), then each in its fastest mode.
#
#   scripts/ds_bench.sh            # full run, peers installed (cached)
#   scripts/ds_bench.sh --quick    # CI smoke: our server and the floor only
#   scripts/ds_bench.sh --runs 3 --spread "10000 100000"
#
# Peers are installed by this script: the two crates with `cargo install`
# into target/peers/<crate> (both name their binary durable-streams-server),
# the Node server with `npm ci` in bench-peers/ (pinned by its lockfile).
# Every server starts on a free loopback port with a fresh temporary data
# directory for each workload and run, and is stopped by its pid. Results:
# target/ds-bench/raw.jsonl (one JSON line per workload run) and
# target/ds-bench/results.md (medians of the runs, ranges, ratios).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

quick=0
runs=3
spread_counts="10000 100000"
only_servers=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --runs) runs="$2"; shift ;;
    --spread) spread_counts="$2"; shift ;;
    --servers) only_servers="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

out="target/ds-bench"
mkdir -p "$out"
raw="$out/raw.jsonl"
: >"$raw"
work="$(mktemp -d)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
cleanup() { stop_server; rm -rf "$work"; }
trap cleanup EXIT
# 1000 SSE readers hold 1000 sockets in the client and the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

echo "== building the load client and livereplay serve (release)"
cargo build --release --features ds-bench --example ds_load --bin livereplay
load="target/release/examples/ds_load"

if [ "$quick" = 1 ]; then
  runs=1
  spread_counts="1000"
  servers_fsync="floor livereplay"
  servers_fast=""
else
  echo "== installing the peers (cached under target/peers and bench-peers/node_modules)"
  if [ ! -x target/peers/durable-streams/bin/durable-streams-server ]; then
    cargo install --locked --root target/peers/durable-streams durable-streams@0.1.5
  fi
  if [ ! -x target/peers/durable-streams-server/bin/durable-streams-server ]; then
    cargo install --locked --root target/peers/durable-streams-server durable-streams-server@0.3.0
  fi
  if [ ! -d bench-peers/node_modules/@durable-streams/server ]; then
    (cd bench-peers && npm ci --no-audit --no-fund)
  fi
  servers_fsync="floor livereplay durable-streams durable-streams-server node"
  servers_fast="livereplay durable-streams durable-streams-server node"
fi
if [ -n "$only_servers" ]; then
  servers_fsync="$only_servers"
  servers_fast="$(echo " $only_servers " | sed 's/ floor / /')"
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_server NAME MODE: starts it on a free port with a fresh data
# directory; sets server_pid and base (the streams' URL prefix).
start_server() {
  local name="$1" mode="$2" port dir
  port="$(free_port)"
  dir="$(mktemp -d -p "$work")"
  case "$name/$mode" in
    floor/*) "$load" floor --port "$port" >"$dir/out" 2>"$dir/err" & ;;
    livereplay/fsync)
      target/release/livereplay serve --port "$port" --data-dir "$dir/data" \
        --long-poll-timeout-ms 5000 >"$dir/out" 2>"$dir/err" & ;;
    livereplay/fast)
      "$load" embedded --port "$port" --data-dir "$dir/data" --durability deferred \
        --long-poll-timeout-ms 5000 >"$dir/out" 2>"$dir/err" & ;;
    durable-streams/*)
      local durability=wal
      [ "$mode" = fast ] && durability=memory
      target/peers/durable-streams/bin/durable-streams-server --host 127.0.0.1 --port "$port" \
        --data-dir "$dir/data" --long-poll-timeout-ms 5000 --durability "$durability" \
        >"$dir/out" 2>"$dir/err" & ;;
    durable-streams-server/*)
      local storage=acid
      [ "$mode" = fast ] && storage=memory
      DS_SERVER__BIND_ADDRESS="127.0.0.1:$port" DS_STORAGE__MODE="$storage" \
        DS_STORAGE__DATA_DIR="$dir/data" DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS=5 \
        DS_LIMITS__MAX_MEMORY_BYTES=$((8 << 30)) DS_LIMITS__MAX_STREAM_BYTES=$((2 << 30)) \
        DS_OBSERVABILITY__RUST_LOG=error \
        target/peers/durable-streams-server/bin/durable-streams-server >"$dir/out" 2>"$dir/err" & ;;
    node/fsync)
      node bench-peers/serve.mjs --port "$port" --data-dir "$dir/data" \
        --long-poll-timeout-ms 5000 >"$dir/out" 2>"$dir/err" & ;;
    node/fast)
      node bench-peers/serve.mjs --port "$port" --long-poll-timeout-ms 5000 \
        >"$dir/out" 2>"$dir/err" & ;;
    *) echo "unknown server $name/$mode" >&2; return 1 ;;
  esac
  server_pid=$!
  base="http://127.0.0.1:$port/v1/stream"
  for _ in $(seq 1 200); do
    if (: </dev/tcp/127.0.0.1/"$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$name ($mode) exited before listening:" >&2; cat "$dir/err" >&2; server_pid=""; return 1
    fi
    sleep 0.05
  done
  echo "$name ($mode) did not listen within 10 s" >&2
  stop_server
  return 1
}

# measure NAME MODE RUN WORKLOAD ARGS...: a fresh server, one workload, its
# RESULT line (tagged with mode and run) appended to raw.jsonl.
measure() {
  local name="$1" mode="$2" run="$3"
  shift 3
  start_server "$name" "$mode" || return 0
  local line
  if line="$(timeout 600 "$load" run --base "$base" --pid "$server_pid" --label "$name" "$@" 2>"$work/client.err" | grep '^RESULT ')"; then
    echo "${line#RESULT }" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["mode"]=sys.argv[1]; r["run"]=int(sys.argv[2]); print(json.dumps(r))' "$mode" "$run" >>"$raw"
    echo "   $name ($mode) run $run: ${line:7:220}"
  else
    echo "   $name ($mode) run $run: $* FAILED: $(tail -c 300 "$work/client.err")"
  fi
  stop_server
}

workloads() {
  local name="$1" mode="$2"
  if [ "$quick" = 1 ]; then
    measure "$name" "$mode" 1 --workload append-one --seconds 2
    [ "$name" = floor ] && return 0
    measure "$name" "$mode" 1 --workload spread --streams 1000 --seconds 2
    measure "$name" "$mode" 1 --workload longpoll --iterations 1
    measure "$name" "$mode" 1 --workload small --iterations 1
    measure "$name" "$mode" 1 --workload large --iterations 1
    measure "$name" "$mode" 1 --workload sse --readers 100 --messages 10
    measure "$name" "$mode" 1 --workload catchup --catchup-mib 10 --iterations 1
    return 0
  fi
  for run in $(seq 1 "$runs"); do
    measure "$name" "$mode" "$run" --workload append-one --seconds 5
  done
  [ "$name" = floor ] && return 0
  for count in $spread_counts; do
    measure "$name" "$mode" 1 --workload spread --streams "$count" --seconds 5 --create-seconds 60
  done
  for run in $(seq 1 "$runs"); do
    measure "$name" "$mode" "$run" --workload longpoll --iterations 3
    measure "$name" "$mode" "$run" --workload small --iterations 3
    measure "$name" "$mode" "$run" --workload large --iterations 2
    measure "$name" "$mode" "$run" --workload sse --readers 1000 --messages 50
  done
  measure "$name" "$mode" 1 --workload catchup --catchup-mib 100 --iterations 3
}

echo "== fsync'd: every server acknowledges an append once it is on disk"
for name in $servers_fsync; do
  echo "-- $name"
  workloads "$name" fsync
done
if [ -n "$servers_fast" ]; then
  echo "== fastest mode of each server"
  for name in $servers_fast; do
    echo "-- $name"
    workloads "$name" fast
  done
fi

echo "== in-process append -> HTTP long-poll reader (livereplay only)"
count=200
[ "$quick" = 1 ] && count=50
for run in $(seq 1 "$runs"); do
  if line="$("$load" inproc --data-dir "$(mktemp -d -p "$work")" --count "$count" | grep '^RESULT ')"; then
    echo "${line#RESULT }" | python3 -c 'import json,sys; r=json.load(sys.stdin); r["mode"]="fsync"; r["run"]=int(sys.argv[1]); print(json.dumps(r))' "$run" >>"$raw"
    echo "   run $run: ${line:7:220}"
  fi
done

python3 scripts/ds_bench_table.py "$raw" >"$out/results.md"
echo "== $out/results.md"
cat "$out/results.md"
if [ "$quick" = 1 ]; then
  # The smoke run must have measured every workload of our server.
  python3 scripts/ds_bench_table.py --check "$raw"
fi
