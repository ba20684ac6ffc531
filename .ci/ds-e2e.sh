#!/usr/bin/env bash
# End to end with real Durable Streams clients (issue 22, item 6): the
# official TypeScript client (@durable-streams/client, pinned in
# e2e-streams/package-lock.json) follows `livereplay serve` in SSE and in
# long-poll mode across a SIGKILL and restart on the same port and data
# directory, while an idempotent producer appends (e2e-streams/
# restart.test.mjs); and headless Debian Chromium follows a stream with the
# same client over SSE across a SIGKILL and restart too
# (e2e-streams/browser.test.mjs, screenshot in target/e2e/ds-browser.png);
# and the client passes a bearer token with its `headers` option and reads
# through a signed URL (e2e-streams/auth.test.mjs);
# and a reader whose requests alternate between two `livereplay serve
# --redis` nodes over one redis-server, in SSE and long-poll mode, while a
# producer writes to both (e2e-streams/nodes.test.mjs).
# The tests start and kill their own servers; the pids they started are
# also listed in a file, and any still alive when this script exits (the
# tests themselves were killed) are killed here. Exits non-zero on any
# failure.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
artifacts="$root/target/e2e"
mkdir -p "$artifacts"
pids_file="$(mktemp "${TMPDIR:-/tmp}/livereplay-ds-e2e-pids.XXXXXX")"

cleanup() {
  while read -r pid; do
    # Only if that pid is still a livereplay server (or a test's redis-server).
    if grep -qE 'livereplay|redis-server' "/proc/$pid/cmdline" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null
    fi
  done <"$pids_file"
  rm -f "$pids_file"
}
trap cleanup EXIT

fail() {
  echo "ds-e2e: $*" >&2
  exit 1
}

if [ ! -x /usr/bin/chromium ]; then
  echo "ds-e2e: installing chromium from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$artifacts/apt.log" 2>&1 || fail "apt-get update failed (see $artifacts/apt.log)"
  apt-get install -y -qq chromium >>"$artifacts/apt.log" 2>&1 || fail "apt-get install chromium failed (see $artifacts/apt.log)"
fi

echo "ds-e2e: building livereplay serve (release)"
cargo build --quiet --release --features durable-streams,redis --bin livereplay || fail "cargo build failed"
server="${CARGO_TARGET_DIR:-$root/target}/release/livereplay"
[ -x "$server" ] || fail "no server binary at $server"

echo "ds-e2e: installing the client, playwright-core and esbuild (npm ci)"
(cd e2e-streams && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci failed in e2e-streams/"

cd e2e-streams
LIVEREPLAY_BIN="$server" DS_E2E_PIDS="$pids_file" \
  timeout 300 node --test --test-concurrency=1 restart.test.mjs browser.test.mjs auth.test.mjs nodes.test.mjs
status=$?
[ "$status" -eq 124 ] && echo "ds-e2e: the tests timed out" >&2
exit "$status"
