#!/usr/bin/env bash
# The Durable Streams conformance suite (@durable-streams/server-conformance-tests,
# pinned in conformance/package-lock.json) against `livereplay serve`.
# Builds the binary (release), starts it on a free loopback port with a
# temporary data directory, reads the port from its first line, runs the
# suite (subscriptions on), stops the server by its pid. Fails if a test
# fails that is not listed in conformance/known-failures.txt, or a listed
# one passes (the list only shrinks). Last line: the counts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

cargo build --release --features durable-streams --bin livereplay

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Long-polls time out well inside vitest's per-test budget.
target/release/livereplay serve --port 0 --data-dir "$work/data" --long-poll-timeout-ms 800 \
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
echo "server at $base (pid $server_pid)"

cd conformance
npm ci --no-audit --no-fund
status=0
CONFORMANCE_TEST_URL="$base" npx vitest run --config vitest.config.mjs \
  --reporter=dot --reporter=json --outputFile="$work/report.json" || true
node check.mjs "$work/report.json" known-failures.txt || status=$?
exit "$status"
