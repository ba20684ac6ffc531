// Headless Debian Chromium follows a text stream of `livereplay serve` with
// the official client (page/follow.mjs, bundled by esbuild for the browser),
// in SSE mode, while the test appends lines with the client's own append
// API; halfway the server is killed with SIGKILL and restarted on the same
// port and data directory. The page must show exactly the appended text,
// in order. The page is
// served from a static server of the test's own on 127.0.0.1, so its reads
// are cross-origin (the server's CORS headers are part of what is tested).
// A screenshot lands in target/e2e/ds-browser.png.

import assert from "node:assert/strict";
import { mkdirSync, readFileSync } from "node:fs";
import http from "node:http";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { after, test } from "node:test";
import { DurableStream } from "@durable-streams/client";
import { build } from "esbuild";
import { chromium } from "playwright-core";
import { Servers, freePort, sleep, waitFor, within } from "./server.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const ARTIFACTS = resolve(here, "../target/e2e");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
  "--no-first-run", "--disable-background-networking", "--disable-component-update",
  "--disable-sync"];
const LINES = 40;
/** After how many acknowledged lines the server is killed and restarted. */
const KILL_AFTER = 20;
const APPEND_EVERY_MS = 30;

const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** The page and its bundle, served on a free loopback port; resolves to its URL. */
async function servePage() {
  const bundle = await build({
    entryPoints: [join(here, "page/follow.mjs")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    logLevel: "silent",
  });
  const files = new Map([
    ["/", { type: "text/html; charset=utf-8", body: readFileSync(join(here, "page/index.html")) }],
    ["/follow.js", { type: "text/javascript; charset=utf-8", body: bundle.outputFiles[0].contents }],
  ]);
  const server = http.createServer((request, response) => {
    const file = files.get(new URL(request.url, "http://127.0.0.1").pathname);
    if (!file) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": file.type }).end(file.body);
  });
  await new Promise((done) => server.listen(0, "127.0.0.1", done));
  cleanups.push(() => new Promise((done) => {
    server.closeAllConnections();
    server.close(done);
  }));
  return `http://127.0.0.1:${server.address().port}`;
}

test("headless Chromium follows a stream with the official client over SSE across a restart", async () => {
  const servers = new Servers();
  cleanups.push(() => servers.stop());
  const port = await freePort();
  let server = await servers.start(port);
  const url = `${server.url}/v1/stream/e2e/browser`;
  const handle = await DurableStream.create({ url, contentType: "text/plain" });

  const pageUrl = await servePage();
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  cleanups.push(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 900, height: 1100 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(String(error)));
  const liveModes = [];
  page.on("request", (request) => {
    const live = new URL(request.url()).searchParams.get("live");
    if (live !== null) liveModes.push(live);
  });
  await page.goto(`${pageUrl}/?stream=${encodeURIComponent(url)}`, { timeout: 15_000 });
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("following"),
    null, { timeout: 15_000 });

  const lines = Array.from({ length: LINES }, (_, n) =>
    `line ${String(n + 1).padStart(2, "0")}: appended by the test, shown by the browser\n`);
  const expected = lines.join("");
  const shown = () => page.evaluate(() => document.getElementById("text").textContent);
  await within(30_000, "appending and showing every line", (async () => {
    for (const [n, line] of lines.entries()) {
      // A plain append, awaited: the kill below never cuts one in flight
      // (restart.test.mjs covers that, with an idempotent producer).
      await handle.append(line);
      if (n + 1 === KILL_AFTER) {
        await waitFor(15_000, `the page showing the first ${KILL_AFTER} lines`,
          async () => (await shown()) === lines.slice(0, KILL_AFTER).join(""));
        await servers.kill(server.child);
        await sleep(300);
        server = await servers.start(port);
      }
      await sleep(APPEND_EVERY_MS);
    }
    await waitFor(15_000, `the page showing all ${LINES} lines`,
      async () => (await shown()).length >= expected.length);
  })());

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, "ds-browser.png"), fullPage: true });

  assert.deepEqual(pageErrors, [], "no uncaught error in the page");
  assert.equal(await page.evaluate(() => document.body.dataset.error ?? null), null,
    "the client's session did not fail");
  assert.equal(await shown(), expected, "the page shows every appended line once, in order");
  const resumes = Number(await page.evaluate(() => document.body.dataset.resumes ?? "0"));
  assert.ok(resumes >= 1 && resumes <= 20,
    `the page resumed its session after the restart (${resumes} times)`);
  assert.ok(liveModes.length > 0 && liveModes.every((live) => live === "sse"),
    `the page read live over SSE only: ${JSON.stringify(liveModes)}`);
});
