// The official Durable Streams client (@durable-streams/client) follows a
// JSON stream of `livereplay serve`, once in SSE mode and once in long-poll
// mode, while an IdempotentProducer appends numbered messages; mid-stream
// the server is killed with SIGKILL and restarted on the same port over the
// same data directory. The reader must end with every message exactly once
// and in order, and a fresh catch-up read must find exactly the same log:
// the producer's retries after the restart (same Producer-Id, epoch and
// sequence number) are deduplicated by the server, not by the reader.

import assert from "node:assert/strict";
import { after, test } from "node:test";
import { DurableStream, IdempotentProducer, stream } from "@durable-streams/client";
import { Servers, freePort, sleep, waitFor, within } from "./server.mjs";

/** Messages per run, and after how many appended ones the server is killed. */
const MESSAGES = 120;
const KILL_AFTER = 50;
/**
 * How long after the producer sends that append the server is killed: at
 * once (the next timer tick). Measured here: 2 ms is long enough for the
 * answer to arrive, so nothing would be in flight.
 */
const KILL_DELAY_MS = 0;
/** Pause between two appends: the run lasts a few seconds. */
const APPEND_EVERY_MS = 15;
/** The whole run (both servers, every message read) must fit in this. */
const RUN_TIMEOUT_MS = 60_000;
/** How long the reader may take to catch up once every append is acknowledged. */
const CATCH_UP_TIMEOUT_MS = 20_000;

const allServers = [];
after(async () => {
  for (const servers of allServers) await servers.stop();
});

/**
 * fetch for the producer: a request that fails in transport (the server is
 * dead, or died before answering) is sent again, unchanged, until an answer
 * comes or `deadline` passes. The producer's Producer-Seq header is part of
 * the request, so a batch the dead server had already made durable comes
 * back as a duplicate (204) instead of being appended twice.
 */
function retryingFetch(stats, timeoutMs) {
  return async (input, init) => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const answering = fetch(input, init);
        stats.onSend?.();
        const answer = await answering;
        // 204: the server already had this (producer, epoch, seq): a retry deduplicated.
        if (answer.status === 204) stats.duplicates++;
        if (answer.ok) stats.lastAnswered = { input, init };
        return answer;
      } catch (error) {
        if (init?.signal?.aborted || Date.now() > deadline) throw error;
        stats.transportRetries++;
        await sleep(50);
      }
    }
  };
}

/** fetch for the reader: records each request's live mode and server generation. */
function recordingFetch(requests, generation) {
  return (input, init) => {
    const url = new URL(typeof input === "string" ? input : input.url);
    requests.push({ live: url.searchParams.get("live"), generation: generation() });
    return fetch(input, init);
  };
}

/** How many times a reader may resume a failed session before giving up. */
const MAX_RESUMES = 20;

/**
 * Follows the stream at `url` from its start with the client's `stream()`,
 * handing each batch's items to `onItems`, until `signal` aborts.
 *
 * The client retries a request that fails before its response starts (the
 * server is down: its backoff), but a response cut mid-body (a SIGKILLed
 * server under an open SSE response: undici's "terminated") ends the
 * session with that error. So, as the client's README says for
 * resumption, the reader keeps the offset of the last batch it handled
 * and opens a new session from there: nothing is skipped and nothing read
 * twice, because a batch's offset is exactly where its items end.
 */
function follow({ url, live, signal, fetch, onItems }) {
  const state = { resumes: 0, errors: [] };
  state.done = (async () => {
    let offset;
    while (!signal.aborted) {
      try {
        const response = await stream({
          url,
          live,
          json: true,
          offset,
          signal,
          fetch,
          // Reconnect quickly while the server is down (the default backoff grows to 60 s).
          backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 1.5, maxRetries: 200 },
        });
        response.subscribeJson(async (batch) => {
          onItems(batch.items);
          offset = batch.offset;
        });
        await response.closed;
      } catch (error) {
        if (signal.aborted) break;
        state.errors.push(String(error));
        if (++state.resumes > MAX_RESUMES) throw error;
        await sleep(50);
      }
    }
  })();
  state.done.catch(() => {});
  return state;
}

async function followAcrossRestart(live) {
  const servers = new Servers();
  allServers.push(servers);
  const port = await freePort();
  let server = await servers.start(port);
  let generation = 1;
  const url = `${server.url}/v1/stream/e2e/${live}`;

  const handle = await DurableStream.create({ url, contentType: "application/json" });

  const received = [];
  const readerRequests = [];
  const reader = new AbortController();
  const follower = follow({
    url,
    live,
    signal: reader.signal,
    fetch: recordingFetch(readerRequests, () => generation),
    onItems: (items) => received.push(...items),
  });

  const writerStats = { transportRetries: 0, duplicates: 0 };
  const writerErrors = [];
  const producer = new IdempotentProducer(handle, `e2e-writer-${live}`, {
    fetch: retryingFetch(writerStats, 30_000),
    lingerMs: 0,
    onError: (error) => writerErrors.push(error),
  });

  let receivedAtKill = -1;
  let answeredByFirstServer;
  try {
    await within(RUN_TIMEOUT_MS, `the ${live} run`, (async () => {
      for (let n = 0; n < MESSAGES; n++) {
        producer.append(JSON.stringify({ n }));
        if (n + 1 === KILL_AFTER) {
          receivedAtKill = received.length;
          await waitFor(5_000, "an append answered by the first server", () => writerStats.lastAnswered);
          answeredByFirstServer = writerStats.lastAnswered;
          // Kill with this append's request in flight: sent, but unanswered.
          // Whether the server made it durable first varies from run to run
          // (a duplicate answer after the restart when it did); either way
          // the message must be in the log exactly once.
          await within(5_000, "the producer sending an append",
            new Promise((sent) => { writerStats.onSend = sent; }));
          writerStats.onSend = undefined;
          await sleep(KILL_DELAY_MS);
          await servers.kill(server.child);
          await sleep(300);
          server = await servers.start(port);
          generation = 2;
        }
        await sleep(APPEND_EVERY_MS);
      }
      await producer.flush();
      await waitFor(CATCH_UP_TIMEOUT_MS, `the reader receiving ${MESSAGES} messages`,
        () => received.length >= MESSAGES).catch((error) => {
        throw new Error(`${error.message} (it has ${received.length}; its requests: ${
          JSON.stringify(readerRequests)}; reader errors: ${follower.errors})`);
      });
      // Anything doubled would arrive right behind the last message.
      await sleep(200);
    })());
  } finally {
    reader.abort();
    await producer.detach().catch(() => {});
  }

  assert.deepEqual(writerErrors, [], "the producer reported no failed batch");
  await within(5_000, "the reader stopping", follower.done);
  assert.ok(follower.resumes <= MAX_RESUMES, "the reader resumed a bounded number of times");
  const expected = Array.from({ length: MESSAGES }, (_, n) => ({ n }));
  assert.deepEqual(received, expected, "every message exactly once, in order");

  // The restart happened mid-stream: the reader had some messages before it
  // and asked the restarted server for the rest, in the mode asked for.
  assert.ok(receivedAtKill > 0 && receivedAtKill < MESSAGES,
    `the server was killed mid-stream (reader had ${receivedAtKill} of ${MESSAGES})`);
  const liveAfterRestart = readerRequests.filter((r) => r.generation === 2 && r.live !== null);
  assert.ok(liveAfterRestart.length > 0, "the reader reconnected to the restarted server");
  assert.ok(liveAfterRestart.every((r) => r.live === live),
    `every live request after the restart was ${live}: ${JSON.stringify(liveAfterRestart)}`);

  // A batch the first server made durable, sent again to the restarted one
  // exactly as the producer sent it (as when the answer is lost in a
  // crash), is recognised by its producer id, epoch and sequence number.
  const { input, init } = answeredByFirstServer;
  const replayed = await fetch(input, init);
  assert.equal(replayed.status, 204, "a replayed producer batch is answered as a duplicate");

  // The log itself holds each message once: read it again from the start.
  const again = await stream({ url, live: false, json: true });
  assert.deepEqual(await again.json(), expected, "a fresh catch-up read finds each message once");

  return {
    receivedAtKill,
    writerTransportRetries: writerStats.transportRetries,
    writerDuplicatesAnswered: writerStats.duplicates,
    readerRequests: readerRequests.length,
    readerResumes: follower.resumes,
    readerErrors: follower.errors,
  };
}

test("SSE reader across a SIGKILL and restart of livereplay serve", async (t) => {
  const report = await followAcrossRestart("sse");
  t.diagnostic(JSON.stringify(report));
});

test("long-poll reader across a SIGKILL and restart of livereplay serve", async (t) => {
  const report = await followAcrossRestart("long-poll");
  t.diagnostic(JSON.stringify(report));
});
