#!/usr/bin/env bash
# The Durable Streams conformance suite (@durable-streams/server-conformance-tests,
# pinned in conformance/package-lock.json) against `livereplay serve`.
# Builds the binary (release), starts it on a free loopback port with a
# temporary data directory, reads the port from its first line, runs the
# suite (subscriptions on), stops the server by its pid. Fails if a test
# fails that is not listed in conformance/known-failures.txt, or a listed
# one passes (the list only shrinks). Last line: the counts.
#
# Usage: ds-conformance.sh [redb|redis]. `redis` (issue 22, several nodes)
# serves over a Redis log instead of redb: the script starts its own
# redis-server on a free loopback port with a temporary directory, and
# stops it by its pid. LIVEREPLAY_BIN=path skips the build and runs that
# binary (built with `--features durable-streams,redis`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

backend="${1:-redb}"
case "$backend" in
  redb|redis) ;;
  *) echo "usage: $0 [redb|redis]"; exit 2 ;;
esac

bin="${LIVEREPLAY_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --features durable-streams,redis --bin livereplay
  bin="${CARGO_TARGET_DIR:-$root/target}/release/livereplay"
fi

work="$(mktemp -d)"
server_pid=""
redis_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

log_args=(--data-dir "$work/data")
if [ "$backend" = redis ]; then
  # A free loopback port (redis-server's `--port 0` would turn TCP off).
  redis_port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  mkdir -p "$work/redis"
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$work/redis" --save '' \
    --appendonly yes >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    if ! kill -0 "$redis_pid" 2>/dev/null; then
      echo "redis-server exited:"; cat "$work/redis.log"; exit 1
    fi
    sleep 0.1
  done
  log_args=(--redis "redis://127.0.0.1:$redis_port/" --namespace conformance)
fi

# Long-polls time out well inside vitest's per-test budget.
"$bin" serve --port 0 "${log_args[@]}" --long-poll-timeout-ms 800 \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
first=""
for _ in $(seq 1 100); do
  first="$(head -n 1 "$work/server.out" 2>/dev/null || true)"
  [ -n "$first" ] && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "the server exited before listening:"; cat "$work/server.err"; exit 1
  fi
  sleep 0.1
done
case "$first" in
  "listening on http://127.0.0.1:"*) base="${first#listening on }" ;;
  *) echo "unexpected first line from the server: '$first'"; cat "$work/server.err"; exit 1 ;;
esac
echo "server at $base (pid $server_pid, $backend log)"

cd conformance
npm ci --no-audit --no-fund
status=0
CONFORMANCE_TEST_URL="$base" npx vitest run --config vitest.config.mjs \
  --reporter=dot --reporter=json --outputFile="$work/report.json" || true
node check.mjs "$work/report.json" known-failures.txt || status=$?
exit "$status"
