// Several nodes (issue 22): two `livereplay serve --redis` processes over
// one redis-server behave as one server for the official client. A reader
// follows a JSON stream with the client's `stream()`, once in SSE mode and
// once in long-poll mode, and every request it makes goes to the other
// node than the one before (a round-robin fetch: SSE responses end every
// second, so it reconnects often); an IdempotentProducer appends numbered
// messages, its batches alternating nodes the same way. The reader must
// end with every message exactly once, in order, having read from both
// nodes, and a fresh catch-up read on each node must find the same log.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client";
import { Servers, freePort, sleep, waitFor, within } from "./server.mjs";

/** Messages per run. */
const MESSAGES = 150;
/** Pause between two appends. */
const APPEND_EVERY_MS = 25;
/** The whole run must fit in this. */
const RUN_TIMEOUT_MS = 60_000;
/** How long the reader may take to catch up once every append is acknowledged. */
const CATCH_UP_TIMEOUT_MS = 20_000;

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** A redis-server on a free loopback port with its own directory, killed by pid at the end. */
async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "livereplay-ds-e2e-redis-"));
  const child = spawn("redis-server", ["--bind", "127.0.0.1", "--port", String(port),
    "--dir", dir, "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
  if (process.env.DS_E2E_PIDS) appendFileSync(process.env.DS_E2E_PIDS, `${child.pid}\n`);
  let out = "";
  child.stdout.on("data", (chunk) => { out += chunk; });
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((done) => child.once("exit", done));
      process.kill(child.pid, "SIGKILL");
      await within(5_000, `redis-server (pid ${child.pid}) exiting`, exited);
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await waitFor(10_000, "redis-server ready", () => out.includes("Ready to accept connections"));
  return `redis://127.0.0.1:${port}/`;
}

/**
 * fetch sending each request to the next node in turn (the request's URL
 * names node A; its origin is swapped), counting requests per node and
 * live mode.
 */
function roundRobinFetch(origins, counts) {
  let next = 0;
  return (input, init) => {
    const url = new URL(typeof input === "string" ? input : input.url);
    const origin = origins[next++ % origins.length];
    const live = url.searchParams.get("live") ?? "catch-up";
    const key = `${origin} ${init?.method ?? "GET"} ${live}`;
    counts[key] = (counts[key] ?? 0) + 1;
    const target = new URL(url.pathname + url.search, origin);
    return fetch(target, init);
  };
}

async function followAcrossNodes(live) {
  const redis = await startRedis();
  const servers = new Servers();
  cleanups.push(() => servers.stop());
  const logArgs = ["--redis", redis, "--namespace", `e2e-${live}`];
  // SSE responses end after a second: the reader reconnects, to the other node.
  const extra = ["--sse-lifetime-ms", "1000"];
  const a = await servers.start(await freePort(), 1_000, logArgs, extra);
  const b = await servers.start(await freePort(), 1_000, logArgs, extra);
  const origins = [a.url, b.url];
  const url = `${a.url}/v1/stream/e2e/nodes-${live}`;
  const handle = await DurableStream.create({ url, contentType: "application/json" });

  const received = [];
  const readerCounts = {};
  const reader = new AbortController();
  let readerError;
  const reading = (async () => {
    let offset;
    while (!reader.signal.aborted) {
      const response = await stream({
        url,
        live,
        json: true,
        offset,
        signal: reader.signal,
        fetch: roundRobinFetch(origins, readerCounts),
      });
      response.subscribeJson(async (batch) => {
        received.push(...batch.items);
        offset = batch.offset;
      });
      await response.closed;
    }
  })().catch((error) => {
    if (!reader.signal.aborted) readerError = error;
  });

  const writerCounts = {};
  const writerErrors = [];
  const producer = new IdempotentProducer(handle, `e2e-nodes-${live}`, {
    fetch: roundRobinFetch(origins, writerCounts),
    lingerMs: 0,
    onError: (error) => writerErrors.push(error),
  });
  try {
    await within(RUN_TIMEOUT_MS, `the ${live} run`, (async () => {
      for (let n = 0; n < MESSAGES; n++) {
        producer.append(JSON.stringify({ n }));
        await sleep(APPEND_EVERY_MS);
      }
      await producer.flush();
      await waitFor(CATCH_UP_TIMEOUT_MS, `the reader receiving ${MESSAGES} messages`,
        () => received.length >= MESSAGES || readerError).catch((error) => {
        throw new Error(`${error.message} (it has ${received.length}; requests: ${
          JSON.stringify(readerCounts)})`);
      });
      // Anything doubled would arrive right behind the last message.
      await sleep(300);
    })());
  } finally {
    reader.abort();
    await producer.detach().catch(() => {});
  }
  await within(5_000, "the reader stopping", reading);

  assert.equal(readerError, undefined, `the reader failed: ${readerError}`);
  assert.deepEqual(writerErrors, [], "the producer reported no failed batch");
  const expected = Array.from({ length: MESSAGES }, (_, n) => ({ n }));
  assert.deepEqual(received, expected, "every message exactly once, in order");
  for (const origin of origins) {
    const liveReads = Object.entries(readerCounts)
      .filter(([key]) => key.startsWith(`${origin} GET ${live}`))
      .reduce((sum, [, count]) => sum + count, 0);
    assert.ok(liveReads > 0, `the reader's ${live} requests reached ${origin}: ${JSON.stringify(readerCounts)}`);
    const writes = Object.entries(writerCounts)
      .filter(([key]) => key.startsWith(`${origin} POST`))
      .reduce((sum, [, count]) => sum + count, 0);
    assert.ok(writes > 0, `the producer's batches reached ${origin}: ${JSON.stringify(writerCounts)}`);
    const again = await stream({ url: `${origin}/v1/stream/e2e/nodes-${live}`, live: false, json: true });
    assert.deepEqual(await again.json(), expected, `a fresh catch-up read on ${origin} finds each message once`);
  }
  return { readerRequests: readerCounts, writerRequests: writerCounts };
}

test("SSE reader alternating two livereplay serve --redis nodes while a producer writes to both", async (t) => {
  t.diagnostic(JSON.stringify(await followAcrossNodes("sse")));
});

test("long-poll reader alternating two livereplay serve --redis nodes while a producer writes to both", async (t) => {
  t.diagnostic(JSON.stringify(await followAcrossNodes("long-poll")));
});
