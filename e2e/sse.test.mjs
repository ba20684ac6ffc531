// Headless Chromium against the SSE demo server: the page's own EventSource
// must resume by Last-Event-ID across the connection drops the server forces
// (--drop-every), and reload from the gap snapshot when the server's window
// moved past it, ending with the full text exactly once, in order.
//
// .ci/sse-e2e.sh starts the servers and passes their addresses:
//   RESUME_URL  a server with forced drops and a default window
//   GAP_URL     a server with forced drops, a tiny window and a slow retry
//   TOKENS_RESUME, TOKENS_GAP  how many tokens each server's turn appends
//   ARTIFACTS   where screenshots go
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
    const finished = await page
      .waitForFunction(() => document.body.dataset.finished === "true", null, {
        timeout: 30_000, polling: 100,
      })
      .then(() => true, () => false);
    const shown = await page.evaluate(() => ({
      text: document.getElementById("text").textContent,
      notices: [...document.querySelectorAll("#notices li")].map((li) => li.textContent),
      ...Object.fromEntries(
        ["tokens", "reconnects", "gaps", "problems"].map((k) => [k, Number(document.body.dataset[k])]),
      ),
    }));
    const response = await fetch(`${baseUrl}/sessions/${session}/transcript`);
    shown.transcript = await response.text();
    shown.consoleErrors = consoleErrors;
    shown.finished = finished;
    return shown;
  } finally {
    await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
    await page.close();
  }
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
];

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
