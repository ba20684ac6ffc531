// The official client (@durable-streams/client) against `livereplay serve`
// with access control: a bearer token passed with the client's `headers`
// option creates, appends and reads; without it the server answers 401; a
// read-only token cannot append; a signed URL from `livereplay sign` reads
// its stream with no header at all, the client adding its own `offset` and
// `live` parameters beside the signature's.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { DurableStream, stream } from "@durable-streams/client";
import { SERVER_BIN, Servers, freePort, within } from "./server.mjs";

const WRITER = "e2e-writer-0123456789abcdef";
const READER = "e2e-reader-0123456789abcdef";
/** The whole test must fit in this. */
const RUN_TIMEOUT_MS = 30_000;

const servers = new Servers();
const secrets = mkdtempSync(join(tmpdir(), "livereplay-ds-auth-"));
after(async () => {
  await servers.stop();
  rmSync(secrets, { recursive: true, force: true });
});

test("bearer tokens through the client's headers option, and a signed URL", async () => {
  const tokens = join(secrets, "tokens.txt");
  writeFileSync(tokens, `${WRITER} acme write\n${READER} acme read\n`);
  const key = join(secrets, "signing.key");
  writeFileSync(key, "e2e-signing-key-0123456789abcdef0123456789");
  const port = await freePort();
  const { url: base } = await servers.start(port, 500, undefined, ["--tokens-file", tokens, "--signing-key-file", key]);
  const url = `${base}/v1/stream/chat/1`;
  await within(RUN_TIMEOUT_MS, "the access-control run", (async () => {
    await assert.rejects(
      DurableStream.create({ url, contentType: "application/json" }),
      (error) => error.status === 401,
      "no token: 401",
    );
    const handle = await DurableStream.create({
      url,
      contentType: "application/json",
      headers: { Authorization: `Bearer ${WRITER}` },
    });
    await handle.append(JSON.stringify({ n: 1 }));
    await handle.append(JSON.stringify({ n: 2 }));

    const read = await stream({ url, live: false, json: true, headers: { Authorization: () => `Bearer ${READER}` } });
    assert.deepEqual(await read.json(), [{ n: 1 }, { n: 2 }]);

    const readOnly = new DurableStream({ url, contentType: "application/json", headers: { Authorization: `Bearer ${READER}` } });
    await assert.rejects(readOnly.append(JSON.stringify({ n: 3 })), (error) => error.status === 403, "read-only: 403");

    const signed = spawnSync(SERVER_BIN, ["sign", "--signing-key-file", key, "--tenant", "acme",
      "--stream", "chat/1", "--ttl-secs", "600", "--base", base], { encoding: "utf8" });
    assert.equal(signed.status, 0, signed.stderr);
    const signedUrl = signed.stdout.trim();
    const viaSignature = await stream({ url: signedUrl, live: false, json: true });
    assert.deepEqual(await viaSignature.json(), [{ n: 1 }, { n: 2 }]);
    // Live: the client adds offset and live=long-poll to the signed URL.
    const following = await stream({ url: signedUrl, offset: viaSignature.offset, live: "long-poll", json: true });
    const next = new Promise((done) => following.subscribeJson(async (batch) => {
      if (batch.items.length > 0) done(batch.items);
    }));
    await handle.append(JSON.stringify({ n: 3 }));
    assert.deepEqual(await next, [{ n: 3 }]);
    following.cancel?.();
  })());
});
