// Headless Chromium against the SSE demo server: the page's own EventSource
// must resume by Last-Event-ID across the connection drops the server forces
// (--drop-every), reload from the gap snapshot when the server's window
// moved past it, and resume with no gap when a server with --data-dir is
// killed (SIGKILL) mid-stream and restarted on the same port, and alternate
// its reconnects between two servers over one shared log (node A runs the
// turn, node B is --host-only), once over Redis and once over PostgreSQL,
// each time ending with the full text exactly once, in order.
//
// .ci/sse-e2e.sh starts the first two servers and passes their addresses:
//   RESUME_URL  a server with forced drops and a default window
//   GAP_URL     a server with forced drops, a tiny window and a slow retry
//   TOKENS_RESUME, TOKENS_GAP  how many tokens each server's turn appends
//   ARTIFACTS   where screenshots and server logs go
// and what the restart scenario starts (and kills) itself:
//   SERVER_BIN      the sse_server binary
//   RESTART_PORT    a free port, used by both lives of the server
//   RESTART_DIR     an empty data directory (it also gets a `pids` file,
//                   so the script can kill a server this test could not)
//   TOKENS_RESTART  how many tokens that turn appends
// and, when redis-server is installed, the two nodes it started over one
// redis-server (empty otherwise: that scenario is left out):
//   NODE_A_URL, NODE_B_URL  node A (--redis) and node B (--host-only --redis)
// and, when PostgreSQL's binaries are installed, the two nodes it started
// over one throw-away Postgres cluster (empty otherwise: left out):
//   PG_NODE_A_URL, PG_NODE_B_URL  node A (--postgres) and node B
//                                 (--host-only --postgres)
//   TOKENS_TWO_NODES        how many tokens each node A's turn appends
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { appendFileSync, createWriteStream, mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (run .ci/sse-e2e.sh)`);
  return value;
};
const artifacts = env("ARTIFACTS");
mkdirSync(artifacts, { recursive: true });

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

// Where two texts first differ, with a little context, for failure messages.
function textDiff(page, want) {
  let at = 0;
  while (at < page.length && at < want.length && page[at] === want[at]) at += 1;
  const around = (text) => JSON.stringify(text.slice(Math.max(0, at - 30), at + 50));
  return `page text (${page.length} chars) differs from the transcript (${want.length} chars) at ${at}:\n` +
    `    page: …${around(page)}\n    want: …${around(want)}`;
}

function check(failures, condition, message) {
  if (!condition) failures.push(message);
}

// The demo's deterministic answer (token_text in examples/sse_server/app.rs).
const WORDS = ["Live", "replay", "keeps", "a", "bounded", "window", "of", "recent", "events", "per",
  "session,", "so", "a", "browser", "that", "lost", "its", "connection", "resumes", "from", "the",
  "last", "cursor", "it", "saw."];
const tokenText = (i) => (i % WORDS.length === 0
  ? `[${Math.floor(i / WORDS.length) + 1}] ${WORDS[i % WORDS.length]} `
  : `${WORDS[i % WORDS.length]} `);

// Servers this test started; killed on exit whatever happens.
const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(1));
}

// Starts the server binary with `args`, logging to `log`; resolves once it
// printed its address (bounded).
function startServer(args, log) {
  return new Promise((resolve, reject) => {
    const child = spawn(env("SERVER_BIN"), args, { stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    appendFileSync(join(env("RESTART_DIR"), "pids"), `${child.pid}\n`);
    const out = createWriteStream(log);
    child.stderr.pipe(out);
    let seen = "";
    const timer = setTimeout(() => reject(new Error(`the server did not start within 15 s (see ${log})`)), 15_000);
    child.stdout.on("data", (chunk) => {
      out.write(chunk);
      seen += chunk;
      if (seen.includes("listening on ")) {
        clearTimeout(timer);
        resolve(child);
      }
    });
    child.on("exit", (code, signal) => {
      children.delete(child);
      clearTimeout(timer);
      reject(new Error(`the server exited (${code ?? signal}) before listening (see ${log})`));
    });
  });
}

// Kills a server and waits (bounded) until it is gone.
async function killServer(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once("exit", resolve));
  child.kill(signal);
  await Promise.race([exited, sleep(10_000)]);
}

// What the page shows, next to the server's transcript.
async function readPage(page, baseUrl, session) {
  const shown = await page.evaluate(() => ({
    text: document.getElementById("text").textContent,
    notices: [...document.querySelectorAll("#notices li")].map((li) => li.textContent),
    ...Object.fromEntries(
      ["tokens", "reconnects", "gaps", "problems"].map((k) => [k, Number(document.body.dataset[k])]),
    ),
  }));
  const response = await fetch(`${baseUrl}/sessions/${session}/transcript`);
  shown.transcript = await response.text();
  return shown;
}

const waitFinished = (page, timeout) => page
  .waitForFunction(() => document.body.dataset.finished === "true", null, { timeout, polling: 100 })
  .then(() => true, () => false);

// Loads the page for a fresh session, waits (bounded) for the turn to
// finish, and returns what the page shows next to the server's transcript.
async function runPage(browser, baseUrl, session, screenshot) {
  const page = await browser.newPage();
  const consoleErrors = [];
  page.on("pageerror", (error) => consoleErrors.push(String(error)));
  try {
    await page.goto(`${baseUrl}/?session=${session}`, { timeout: 30_000 });
    // Bounded: a turn takes a few seconds; a page that never finishes (say,
    // restarting from the top on every reconnect) is reported, not waited on.
    const finished = await waitFinished(page, 30_000);
    const shown = await readPage(page, baseUrl, session);
    shown.consoleErrors = consoleErrors;
    shown.finished = finished;
    return shown;
  } finally {
    await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    await page.close();
  }
}

// The two-node scenario over one shared log: the script started node A
// (runs the turn) and node B (--host-only) over it and passes their
// addresses in the environment variables named `nodeA` and `nodeB` (empty
// when `missing` is not installed: the scenario is skipped).
function twoNodes({ log, nodeA: nodeAVar, nodeB: nodeBVar, missing, session, screenshot }) {
  return {
    name: `the page alternates between two nodes over one ${log} (A runs the turn, B is --host-only) and gets the text exactly once`,
    skip: process.env[nodeAVar] ? false : missing,
    async run(browser) {
      const tokens = Number(env("TOKENS_TWO_NODES"));
      const nodeA = env(nodeAVar);
      const nodeB = env(nodeBVar);
      const page = await browser.newPage();
      const consoleErrors = [];
      page.on("pageerror", (error) => consoleErrors.push(String(error)));
      let shown;
      let finished = false;
      let perNode = {};
      let onB = "";
      try {
        // Served by A (whose first request starts the turn); every
        // reconnect goes to the other node, resuming with ?cursor=.
        const nodes = encodeURIComponent(`${nodeA},${nodeB}`);
        await page.goto(`${nodeA}/?session=${session}&nodes=${nodes}&retry=200`, { timeout: 30_000 });
        finished = await waitFinished(page, 60_000);
        shown = await readPage(page, nodeA, session);
        perNode = JSON.parse(await page.evaluate(() => document.body.dataset.opensPerNode || "{}"));
        onB = await (await fetch(`${nodeB}/sessions/${session}/transcript`)).text();
      } finally {
        await page.screenshot({ path: join(artifacts, screenshot), fullPage: true }).catch(() => {});
        await page.close();
      }
      const want = Array.from({ length: tokens }, (_, i) => tokenText(i)).join("");
      const failures = [];
      check(failures, finished, `the page did not report the turn finished within 60 s (${shown.tokens} tokens, ${shown.problems} problems shown)`);
      check(failures, shown.text === want, textDiff(shown.text, want));
      check(failures, shown.transcript === want, `node A's transcript: ${textDiff(shown.transcript, want)}`);
      check(failures, onB === want, `node B's transcript (read from ${log}): ${textDiff(onB, want)}`);
      check(failures, shown.tokens === tokens, `page counted ${shown.tokens} tokens, the turn appends ${tokens}`);
      check(failures, shown.problems === 0, `page saw ${shown.problems} out-of-order, lost or repeated events`);
      check(failures, shown.gaps === 0, `unexpected gaps: ${shown.gaps}`);
      check(failures, shown.reconnects >= 4, `only ${shown.reconnects} reconnects; --drop-every 5 should force a dozen`);
      check(failures, (perNode[nodeA] || 0) >= 2 && (perNode[nodeB] || 0) >= 2,
        `connections per node ${JSON.stringify(perNode)}: both nodes should have served several`);
      check(failures, shown.notices.some((n) => n.includes(`resumed from position`) && n.includes(`on ${nodeB}`)),
        "no 'resumed from position … on node B' notice");
      check(failures, consoleErrors.length === 0, `page errors: ${consoleErrors}`);
      return {
        failures,
        summary: `${shown.tokens} tokens, ${shown.reconnects} reconnects, connections per node ${JSON.stringify(perNode)}, ${shown.gaps} gaps`,
      };
    },
  };
}

const tests = [
  {
    name: "the page resumes by Last-Event-ID across forced reconnects",
    async run(browser) {
      const tokens = Number(env("TOKENS_RESUME"));
      const shown = await runPage(browser, env("RESUME_URL"), "e2e-resume", join(artifacts, "sse.png"));
      const failures = [];
      check(failures, shown.finished, `the page did not report the turn finished within 30 s (${shown.tokens} tokens, ${shown.problems} problems shown)`);
      check(failures, shown.transcript.length > 0, "the server's transcript is empty");
      check(failures, shown.text === shown.transcript, textDiff(shown.text, shown.transcript));
      check(failures, shown.tokens === tokens, `page counted ${shown.tokens} tokens, the turn appends ${tokens}`);
      check(failures, shown.problems === 0, `page saw ${shown.problems} out-of-order, lost or repeated events`);
      check(failures, shown.reconnects >= 2, `only ${shown.reconnects} reconnects; --drop-every should force several`);
      check(failures, shown.gaps === 0, `unexpected gaps: ${shown.gaps}`);
      check(failures, shown.notices.some((n) => n.includes("reconnected, resumed from position")),
        "no 'reconnected, resumed from' notice");
      check(failures, shown.consoleErrors.length === 0, `page errors: ${shown.consoleErrors}`);
      return { failures, summary: `${shown.tokens} tokens, ${shown.reconnects} reconnects, ${shown.gaps} gaps` };
    },
  },
  {
    name: "the page reloads from the gap snapshot when its cursor left the window",
    async run(browser) {
      const tokens = Number(env("TOKENS_GAP"));
      const shown = await runPage(browser, env("GAP_URL"), "e2e-gap", join(artifacts, "sse-gap.png"));
      const failures = [];
      check(failures, shown.finished, `the page did not report the turn finished within 30 s (${shown.tokens} tokens, ${shown.problems} problems shown)`);
      check(failures, shown.text === shown.transcript, textDiff(shown.text, shown.transcript));
      check(failures, shown.tokens === tokens, `page counted ${shown.tokens} tokens, the turn appends ${tokens}`);
      check(failures, shown.problems === 0, `page saw ${shown.problems} out-of-order, lost or repeated events`);
      check(failures, shown.gaps >= 1, "no gap although the window is tiny and the retry slow");
      check(failures, shown.notices.some((n) => n.includes("reloaded")), "no 'gap, reloaded' notice");
      check(failures, shown.consoleErrors.length === 0, `page errors: ${shown.consoleErrors}`);
      return { failures, summary: `${shown.tokens} tokens, ${shown.reconnects} reconnects, ${shown.gaps} gaps` };
    },
  },
  {
    name: "the page resumes with no gap across a server killed (SIGKILL) and restarted on its --data-dir",
    async run(browser) {
      const tokens = Number(env("TOKENS_RESTART"));
      const port = env("RESTART_PORT");
      const baseUrl = `http://127.0.0.1:${port}`;
      const session = "e2e-restart";
      const args = ["--port", port, "--data-dir", env("RESTART_DIR"), "--tokens", String(tokens),
        "--token-ms", "40", "--retry-ms", "300"];
      let server = await startServer(args, join(artifacts, "server-restart-1.log"));
      const page = await browser.newPage();
      const consoleErrors = [];
      page.on("pageerror", (error) => consoleErrors.push(String(error)));
      const failures = [];
      let atKill = -1;
      let whileDown = "";
      let shown;
      let finished = false;
      try {
        await page.goto(`${baseUrl}/?session=${session}`, { timeout: 30_000 });
        // Mid-stream: a third of the turn is on the page.
        const third = Math.floor(tokens / 3);
        await page.waitForFunction((n) => Number(document.body.dataset.tokens) >= n, third,
          { timeout: 30_000, polling: 20 });
        await killServer(server, "SIGKILL");
        atKill = await page.evaluate(() => Number(document.body.dataset.tokens));
        // Down for a while: the page notices and keeps retrying.
        await sleep(1_000);
        whileDown = await page.evaluate(() => document.getElementById("status").textContent);
        server = await startServer(args, join(artifacts, "server-restart-2.log"));
        finished = await waitFinished(page, 60_000);
        shown = await readPage(page, baseUrl, session);
      } finally {
        await page.screenshot({ path: join(artifacts, "sse-restart.png"), fullPage: true }).catch(() => {});
        await page.close();
        await killServer(server, "SIGTERM");
      }
      const want = Array.from({ length: tokens }, (_, i) => tokenText(i)).join("");
      check(failures, finished, `the page did not report the turn finished within 60 s of the restart (${shown.tokens} tokens, ${shown.problems} problems shown)`);
      check(failures, atKill > 0 && atKill < tokens, `the server was not killed mid-stream: the page had ${atKill} of ${tokens} tokens`);
      check(failures, whileDown.includes("reconnecting"), `while the server was down the page said ${JSON.stringify(whileDown)}`);
      check(failures, shown.text === want, textDiff(shown.text, want));
      check(failures, shown.transcript === want, `the restarted server's transcript: ${textDiff(shown.transcript, want)}`);
      check(failures, shown.tokens === tokens, `page counted ${shown.tokens} tokens, the turn appends ${tokens}`);
      check(failures, shown.problems === 0, `page saw ${shown.problems} out-of-order, lost or repeated events`);
      check(failures, shown.gaps === 0, `gaps across the restart: ${shown.gaps}`);
      check(failures, shown.reconnects >= 1, "the page never reconnected");
      check(failures, shown.notices.some((n) => n.includes("reconnected, resumed from position")),
        "no 'reconnected, resumed from' notice");
      check(failures, consoleErrors.length === 0, `page errors: ${consoleErrors}`);
      return {
        failures,
        summary: `killed at ${atKill}/${tokens} tokens, ${shown.tokens} tokens, ${shown.reconnects} reconnects, ${shown.gaps} gaps`,
      };
    },
  },
  twoNodes({ log: "Redis", nodeA: "NODE_A_URL", nodeB: "NODE_B_URL", missing: "redis-server",
    session: "e2e-two-nodes", screenshot: "sse-two-nodes.png" }),
  twoNodes({ log: "Postgres", nodeA: "PG_NODE_A_URL", nodeB: "PG_NODE_B_URL",
    missing: "PostgreSQL binaries", session: "e2e-two-nodes-postgres",
    screenshot: "sse-two-nodes-postgres.png" }),
].filter((test) => {
  if (test.skip) console.log(`SKIPPED ${test.name} (no ${test.skip})`);
  return !test.skip;
});

const userDataDir = mkdtempSync(join(tmpdir(), "livereplay-e2e-"));
let passed = 0;
let failed = 0;
let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  for (const test of tests) {
    const started = Date.now();
    try {
      const { failures, summary } = await test.run(context);
      const seconds = ((Date.now() - started) / 1000).toFixed(1);
      if (failures.length === 0) {
        passed += 1;
        console.log(`ok   ${test.name} (${summary}; ${seconds} s)`);
      } else {
        failed += 1;
        console.log(`FAIL ${test.name} (${summary}; ${seconds} s)\n  - ${failures.join("\n  - ")}`);
      }
    } catch (error) {
      failed += 1;
      console.log(`FAIL ${test.name}: ${error.stack || error}`);
    }
  }
} catch (error) {
  failed += tests.length - passed - failed;
  console.log(`FAIL cannot run the browser: ${error.stack || error}`);
} finally {
  await context?.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(`e2e: ${passed} passed, ${failed} failed`);
process.exit(failed === 0 && passed === tests.length ? 0 : 1);
