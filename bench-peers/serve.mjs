// Starts the Node reference Durable Streams server (@durable-streams/server,
// pinned in package-lock.json) for scripts/ds_bench.sh: on 127.0.0.1, on
// the port given (0: a free one), in memory, or file-backed (each append
// fdatasync'd) when a data directory is given. First stdout line:
// `listening on http://127.0.0.1:PORT`. Runs until killed.
//
//   node serve.mjs [--port N] [--data-dir DIR] [--long-poll-timeout-ms MS]
import { DurableStreamTestServer } from "@durable-streams/server";

const args = process.argv.slice(2);
const flag = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 && at + 1 < args.length ? args[at + 1] : fallback;
};
const server = new DurableStreamTestServer({
  host: "127.0.0.1",
  port: Number(flag("--port", "0")),
  dataDir: flag("--data-dir", undefined),
  longPollTimeout: Number(flag("--long-poll-timeout-ms", "20000")),
  // The load client never asks for compressed responses; nothing to gain.
  compression: false,
});
const url = await server.start();
console.log(`listening on ${url}`);
