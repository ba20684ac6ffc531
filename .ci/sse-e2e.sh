#!/usr/bin/env bash
# Headless Chromium end-to-end test of the SSE demo (examples/sse_server):
# a real browser's EventSource must resume by Last-Event-ID across the
# connection drops the server forces, reload from the gap snapshot when its
# cursor left the window, and resume with no gap when a server with
# --data-dir is killed (SIGKILL) mid-stream and restarted on the same port,
# and deliver the text exactly once when its reconnects alternate between
# two servers over one shared log (node A runs the turn, node B is
# --host-only): once over a redis-server (--redis), once over a PostgreSQL
# cluster (--postgres).
# Installs what it needs (Debian's chromium, playwright-core from npm; never
# a browser download), starts two servers on ephemeral ports (the test
# itself starts and kills the restart scenario's server), a redis-server on
# a free loopback port with its own temporary directory (append-only file
# on) and a throw-away PostgreSQL cluster (initdb into a temporary
# directory, run as an unprivileged user through setpriv when we are root,
# listening on a free port of 127.0.0.1 and a socket in that directory),
# each with two nodes over it, runs e2e/sse.test.mjs, and kills every
# server on exit (Postgres by its postmaster's pid). Without redis-server,
# or without Debian's PostgreSQL binaries (/usr/lib/postgresql/*/bin), that
# two-node scenario is skipped loudly (a failure under CI=true).
# Screenshots land in target/e2e/. Last line: "e2e: N passed, M failed".
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
artifacts="$root/target/e2e"
mkdir -p "$artifacts"
tests_total=5
# Servers are started inside $(...) (a subshell), so their pids go to a file,
# not to a variable of this shell.
server_pids="$artifacts/servers.pids"
: >"$server_pids"
restart_dir=""
redis_pid=""
redis_dir=""
pg_pid=""
pg_dir=""

# Kills the servers whose pids are listed in file $1 (only those that are
# still our server binary).
kill_listed() {
  [ -f "$1" ] || return 0
  while read -r pid; do
    if grep -q sse_server "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null
    fi
  done <"$1"
}

cleanup() {
  kill_listed "$server_pids"
  # The two nodes' redis-server (only if that pid is still it).
  # SIGTERM (bash reports a SIGKILLed job after the last line), SIGKILL
  # if it is still there after 5 s.
  if [ -n "$redis_pid" ] && grep -q redis-server "/proc/$redis_pid/cmdline" 2>/dev/null; then
    kill "$redis_pid" 2>/dev/null
    for _ in $(seq 1 50); do
      [ -d "/proc/$redis_pid" ] || break
      sleep 0.1
    done
    kill -9 "$redis_pid" 2>/dev/null
    wait "$redis_pid" 2>/dev/null
  fi
  [ -n "$redis_dir" ] && rm -rf "$redis_dir"
  # The Postgres nodes' postmaster (only if that pid is still it): SIGINT
  # is a fast shutdown (its backends exit with it); SIGKILL after 5 s.
  if [ -n "$pg_pid" ] && grep -q postgres "/proc/$pg_pid/cmdline" 2>/dev/null; then
    kill -INT "$pg_pid" 2>/dev/null
    for _ in $(seq 1 50); do
      [ -d "/proc/$pg_pid" ] || break
      sleep 0.1
    done
    kill -9 "$pg_pid" 2>/dev/null
    wait "$pg_pid" 2>/dev/null
  fi
  [ -n "$pg_dir" ] && rm -rf "$pg_dir"
  # The restart scenario's servers, started by the test itself, which lists
  # their pids there: any it could not kill.
  if [ -n "$restart_dir" ]; then
    kill_listed "$restart_dir/pids"
    rm -rf "$restart_dir"
  fi
}
trap cleanup EXIT

fail() {
  echo "sse-e2e: $*" >&2
  echo "e2e: 0 passed, $tests_total failed"
  exit 1
}

if [ ! -x /usr/bin/chromium ]; then
  echo "sse-e2e: installing chromium from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$artifacts/apt.log" 2>&1 || fail "apt-get update failed (see $artifacts/apt.log)"
  apt-get install -y -qq chromium >>"$artifacts/apt.log" 2>&1 || fail "apt-get install chromium failed (see $artifacts/apt.log)"
fi

echo "sse-e2e: installing playwright-core (npm ci)"
(cd e2e && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci failed in e2e/"

echo "sse-e2e: building the example"
cargo build --quiet --features sse-demo --example sse_server || fail "cargo build failed"
server="${CARGO_TARGET_DIR:-$root/target}/debug/examples/sse_server"
[ -x "$server" ] || fail "no server binary at $server"

# Starts a server with the given flags on an ephemeral port; prints its URL.
start_server() {
  local log="$1"
  shift
  # Emptied here, not only by the server's redirection: that runs in the
  # forked child, and until it does, the wait below could read the last
  # run's "listening on" line (an empty or stale URL).
  : >"$log"
  "$server" --port 0 "$@" >"$log" 2>&1 &
  echo "$!" >>"$server_pids"
  # Bounded wait for the first line: "listening on http://127.0.0.1:PORT".
  for _ in $(seq 1 100); do
    if grep -q '^listening on ' "$log" 2>/dev/null; then
      head -n 1 "$log" | sed 's/^listening on //'
      return 0
    fi
    sleep 0.1
  done
  return 1
}

tokens_resume=60
tokens_gap=150
# Default window; every connection is dropped after 7 events.
resume_url="$(start_server "$artifacts/server-resume.log" \
  --tokens "$tokens_resume" --token-ms 30 --drop-every 7 --retry-ms 200)" \
  || fail "the resume server did not start (see $artifacts/server-resume.log)"
# An 8-event window and a 400 ms retry while 100 tokens/s are appended: every
# reconnect finds its cursor trimmed.
gap_url="$(start_server "$artifacts/server-gap.log" \
  --tokens "$tokens_gap" --token-ms 10 --drop-every 5 --capacity 8 --retry-ms 400)" \
  || fail "the gap server did not start (see $artifacts/server-gap.log)"
echo "sse-e2e: servers at $resume_url and $gap_url"

# The restart scenario: a fixed free port (the restarted server must come
# back where the browser reconnects) and a fresh data directory.
tokens_restart=80
restart_dir="$(mktemp -d "${TMPDIR:-/tmp}/livereplay-e2e-restart.XXXXXX")" \
  || fail "cannot create a data directory"
# A free loopback port that a server binds later, by number: picked below
# the kernel's ephemeral range, so no port-0 bind in the meantime (the
# other servers, the browser's connections) can take it, and never one of
# the ports given as arguments. (Picking with port 0 and closing raced: the
# kernel handed the restart scenario's port to redis-server too.)
free_port() {
  node -e '
const net = require("net");
const [low] = require("fs").readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
  .trim().split(/\s+/).map(Number);
const taken = new Set(process.argv.slice(1).map(Number));
const floor = 10000, ceiling = Math.max(floor + 1000, low || 32768);
let tries = 0;
(function attempt() {
  if (++tries > 200) { console.error("no free port below " + ceiling); process.exit(1); }
  const port = floor + Math.floor(Math.random() * (ceiling - floor));
  if (taken.has(port)) return attempt();
  const s = net.createServer();
  s.once("error", attempt);
  s.listen(port, "127.0.0.1", () => { console.log(port); s.close(); });
})();' "$@"
}
restart_port="$(free_port)" || fail "cannot pick a free port"
echo "sse-e2e: restart scenario on port $restart_port, data in $restart_dir"

# The two-node scenario: one redis-server (a free loopback port, a fresh
# directory, append-only file on) and two servers over it.
# Whether the redis-server on port $1 answers PING with PONG.
redis_ping() {
  local reply=""
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'PING\r\n' >&3
  read -r -t 1 reply <&3
  exec 3<&- 3>&-
  [[ "$reply" == +PONG* ]]
}
tokens_two_nodes=60
node_a_url=""
node_b_url=""
if command -v redis-server >/dev/null 2>&1; then
  redis_dir="$(mktemp -d "${TMPDIR:-/tmp}/livereplay-e2e-redis.XXXXXX")" \
    || fail "cannot create the redis directory"
  redis_port="$(free_port "$restart_port")" || fail "cannot pick a free port for redis-server"
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$redis_dir" \
    --appendonly yes --save "" --daemonize no --logfile "$redis_dir/redis.log" \
    >/dev/null 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do
    redis_ping "$redis_port" 2>/dev/null && break
    sleep 0.1
  done
  redis_ping "$redis_port" 2>/dev/null \
    || fail "redis-server did not start on port $redis_port (see $redis_dir/redis.log)"
  redis_url="redis://127.0.0.1:$redis_port/"
  # Node A runs the turns; node B only serves what A writes to Redis.
  # Every response ends after 5 events, so the page reconnects (to the
  # other node) a dozen times.
  node_a_url="$(start_server "$artifacts/server-node-a.log" --redis "$redis_url" \
    --tokens "$tokens_two_nodes" --token-ms 30 --drop-every 5 --retry-ms 200)" \
    || fail "node A did not start (see $artifacts/server-node-a.log)"
  node_b_url="$(start_server "$artifacts/server-node-b.log" --redis "$redis_url" \
    --host-only --drop-every 5 --retry-ms 200)" \
    || fail "node B did not start (see $artifacts/server-node-b.log)"
  echo "sse-e2e: two nodes over $redis_url: A at $node_a_url, B (--host-only) at $node_b_url"
elif [ "${CI:-}" = "true" ]; then
  fail "redis-server is not installed and CI=true: the two-node scenario must run"
else
  tests_total=$((tests_total - 1))
  echo "" >&2
  echo "==================================================================" >&2
  echo "SKIPPED: redis-server not found; the two-node scenario did not run." >&2
  echo "Install it (apt-get install redis-server) to run it." >&2
  echo "==================================================================" >&2
fi

# The same two-node scenario over a throw-away PostgreSQL cluster: Debian's
# newest /usr/lib/postgresql/<version>/bin, initdb into a fresh directory
# (trust authentication for the postgres role, no fsync of initdb's own
# files), the server on a free loopback port. Postgres refuses to run as
# root: then every server binary runs through setpriv as the postgres
# user (nobody where there is none), which execs, so $! is the postmaster.
pg_bin=""
for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
  [ -x "$candidate/initdb" ] && [ -x "$candidate/postgres" ] && pg_bin="$candidate"
done
pg_node_a_url=""
pg_node_b_url=""
if [ -n "$pg_bin" ]; then
  pg_as=()
  pg_user=""
  if [ "$(id -u)" = "0" ]; then
    for name in postgres nobody; do
      if id -u "$name" >/dev/null 2>&1; then pg_user="$name"; break; fi
    done
    [ -n "$pg_user" ] || fail "neither a postgres nor a nobody user to run postgres as"
    pg_as=(setpriv "--reuid=$(id -u "$pg_user")" "--regid=$(id -g "$pg_user")" --clear-groups --)
  fi
  pg_dir="$(mktemp -d "${TMPDIR:-/tmp}/livereplay-e2e-postgres.XXXXXX")" \
    || fail "cannot create the postgres directory"
  [ -z "$pg_user" ] || chown "$pg_user:" "$pg_dir" || fail "cannot hand $pg_dir to $pg_user"
  "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -U postgres --auth=trust -E UTF8 \
    --no-locale --no-sync >"$artifacts/postgres-initdb.log" 2>&1 </dev/null \
    || fail "initdb failed (see $artifacts/postgres-initdb.log)"
  pg_port="$(free_port "$restart_port" "${redis_port:-0}")" \
    || fail "cannot pick a free port for postgres"
  "${pg_as[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -k "$pg_dir" -p "$pg_port" \
    -c listen_addresses=127.0.0.1 >"$artifacts/postgres.log" 2>&1 </dev/null &
  pg_pid=$!
  pg_ready=""
  for _ in $(seq 1 150); do
    if "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -t 1 2>/dev/null; then
      pg_ready=1
      break
    fi
    [ -d "/proc/$pg_pid" ] || break
    sleep 0.1
  done
  [ -n "$pg_ready" ] || fail "postgres did not start on port $pg_port (see $artifacts/postgres.log)"
  pg_url="postgresql://postgres@127.0.0.1:$pg_port/postgres"
  pg_node_a_url="$(start_server "$artifacts/server-pg-node-a.log" --postgres "$pg_url" \
    --tokens "$tokens_two_nodes" --token-ms 30 --drop-every 5 --retry-ms 200)" \
    || fail "Postgres node A did not start (see $artifacts/server-pg-node-a.log)"
  pg_node_b_url="$(start_server "$artifacts/server-pg-node-b.log" --postgres "$pg_url" \
    --host-only --drop-every 5 --retry-ms 200)" \
    || fail "Postgres node B did not start (see $artifacts/server-pg-node-b.log)"
  echo "sse-e2e: two nodes over $pg_url: A at $pg_node_a_url, B (--host-only) at $pg_node_b_url"
elif [ "${CI:-}" = "true" ]; then
  fail "no /usr/lib/postgresql/*/bin/initdb and CI=true: the Postgres two-node scenario must run"
else
  tests_total=$((tests_total - 1))
  echo "" >&2
  echo "==================================================================" >&2
  echo "SKIPPED: no /usr/lib/postgresql/*/bin/initdb; the Postgres two-node" >&2
  echo "scenario did not run. Install it (apt-get install postgresql) to run it." >&2
  echo "==================================================================" >&2
fi

RESUME_URL="$resume_url" GAP_URL="$gap_url" \
  TOKENS_RESUME="$tokens_resume" TOKENS_GAP="$tokens_gap" ARTIFACTS="$artifacts" \
  SERVER_BIN="$server" RESTART_PORT="$restart_port" RESTART_DIR="$restart_dir" \
  TOKENS_RESTART="$tokens_restart" \
  NODE_A_URL="$node_a_url" NODE_B_URL="$node_b_url" TOKENS_TWO_NODES="$tokens_two_nodes" \
  PG_NODE_A_URL="$pg_node_a_url" PG_NODE_B_URL="$pg_node_b_url" \
  timeout 240 node e2e/sse.test.mjs
status=$?
if [ "$status" -eq 124 ]; then
  echo "sse-e2e: the browser test timed out" >&2
  echo "e2e: 0 passed, $tests_total failed"
fi
exit "$status"
