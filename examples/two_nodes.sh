#!/usr/bin/env bash
# The two-node SSE demo: one redis-server and two sse_server processes over
# it, as behind a load balancer without sticky sessions. Node A runs each
# session's turn and ships its events to Redis (`--redis URL`); node B runs
# no turns and serves every session from Redis (`--redis URL --host-only`).
# The page printed below alternates its reconnects between A and B (every
# response ends after 7 events) and resumes exactly on either.
#
#   bash examples/two_nodes.sh                  # any free ports
#   PORT_A=3000 PORT_B=3001 bash examples/two_nodes.sh --tokens 300
#
# Extra arguments go to both nodes (sse_server flags; the default is
# `--drop-every 7`). Needs redis-server on PATH (Debian: apt-get install
# redis-server). It starts its own on a free 127.0.0.1 port with a
# temporary directory (append-only file on), and stops everything and
# removes that directory on Ctrl-C or exit. Everything binds 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

command -v redis-server >/dev/null 2>&1 || {
  echo "two_nodes: redis-server is not on PATH (Debian: apt-get install redis-server)" >&2
  exit 1
}

extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--drop-every 7)

dir="$(mktemp -d "${TMPDIR:-/tmp}/livereplay-two-nodes.XXXXXX")"
redis_pid=""
node_pids=()

cleanup() {
  trap - EXIT INT TERM
  for pid in "${node_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  if [ -n "$redis_pid" ]; then
    kill "$redis_pid" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "two_nodes: building the example"
cargo build --quiet --features sse-demo --example sse_server
server="${CARGO_TARGET_DIR:-$root/target}/debug/examples/sse_server"

# Whether the redis-server on port $1 answers PING with PONG.
redis_ping() {
  local reply=""
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'PING\r\n' >&3
  read -r -t 1 reply <&3 || true
  exec 3<&- 3>&-
  [[ "$reply" == +PONG* ]]
}

# A random high port; redis-server exits if it is taken, and another is tried.
redis_port=""
for _ in $(seq 1 20); do
  port=$((20000 + RANDOM % 40000))
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
    --save "" --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 50); do
    if redis_ping "$port" 2>/dev/null; then
      redis_port="$port"
      break 2
    fi
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
done
[ -n "$redis_port" ] || {
  echo "two_nodes: redis-server did not start (see $dir/redis.log)" >&2
  exit 1
}
redis_url="redis://127.0.0.1:$redis_port/"

# Starts a node; prints its address once it listens.
start_node() {
  local name="$1" port="$2"
  shift 2
  "$server" --port "$port" --redis "$redis_url" "$@" >"$dir/$name.log" 2>&1 &
  node_pids+=("$!")
  for _ in $(seq 1 100); do
    if grep -q '^listening on ' "$dir/$name.log" 2>/dev/null; then
      head -n 1 "$dir/$name.log" | sed 's/^listening on //'
      return 0
    fi
    sleep 0.1
  done
  echo "two_nodes: node $name did not start:" >&2
  cat "$dir/$name.log" >&2
  return 1
}

# Not in $(...): the pids must land in this shell's array.
start_node a "${PORT_A:-0}" "${extra[@]}" >"$dir/a.url"
start_node b "${PORT_B:-0}" --host-only "${extra[@]}" >"$dir/b.url"
a="$(cat "$dir/a.url")"
b="$(cat "$dir/b.url")"

cat <<EOF
redis-server  $redis_url (data in $dir)
node A        $a   (runs the turns, ships them to Redis)
node B        $b   (--host-only: serves from Redis, runs nothing)

Open this page: its reconnects alternate between A and B:
  $a/?nodes=$a,$b

Or only one node: $a/ or $b/?nodes=$b (B alone serves a session A has run).
Ctrl-C stops all three.
EOF
wait
