// Starting and stopping `livereplay serve` for the end-to-end tests: a free
// loopback port picked up front (a restarted server must come back where
// the clients reconnect), a temporary data directory, and every process
// killed by pid when the test ends, whether it passed or not.

import { spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

/** The server binary: $LIVEREPLAY_BIN, else the workspace's release build. */
export const SERVER_BIN = process.env.LIVEREPLAY_BIN ?? resolve(here, "../target/release/livereplay");

/** How long a server may take to print its address. */
const START_TIMEOUT_MS = 15_000;

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** Resolves `promise`, or rejects after `ms` with a message naming `what`. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `condition` every 25 ms until it holds; fails after `ms`. */
export async function waitFor(ms, what, condition) {
  const deadline = Date.now() + ms;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await sleep(25);
  }
}

/**
 * A loopback port nothing listens on, picked below the kernel's ephemeral
 * range so that no port-0 bind (the clients' own connections, another
 * server) can take it between the first server's death and its restart.
 */
export async function freePort() {
  const [low] = readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8")
    .trim()
    .split(/\s+/)
    .map(Number);
  const floor = 10_000;
  const ceiling = Math.max(floor + 1_000, low || 32_768);
  for (let tries = 0; tries < 200; tries++) {
    const port = floor + Math.floor(Math.random() * (ceiling - floor));
    const bound = await new Promise((done) => {
      const probe = net.createServer();
      probe.once("error", () => done(false));
      probe.listen(port, "127.0.0.1", () => probe.close(() => done(true)));
    });
    if (bound) return port;
  }
  throw new Error(`no free loopback port in [${floor}, ${ceiling})`);
}

/**
 * The servers a test started, and its data directory. `stop()` kills every
 * one still alive (SIGKILL, by pid) and removes the directory: call it in a
 * `finally` or an `after` hook.
 */
export class Servers {
  constructor() {
    this.dataDir = mkdtempSync(join(tmpdir(), "livereplay-ds-e2e-"));
    this.children = new Set();
    this.logs = [];
  }

  /**
   * Starts `livereplay serve` on `port`; resolves to its base URL. `logArgs`
   * name its log (default: this test's data directory; `--redis URL` for
   * several nodes), `extraArgs` any other flags.
   */
  start(port, longPollTimeoutMs = 2_000, logArgs = ["--data-dir", this.dataDir], extraArgs = []) {
    const args = ["serve", "--port", String(port), ...logArgs,
      "--long-poll-timeout-ms", String(longPollTimeoutMs), ...extraArgs];
    const child = spawn(SERVER_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    this.children.add(child);
    // For .ci/ds-e2e.sh, which kills what is left if this process itself is killed.
    if (process.env.DS_E2E_PIDS) appendFileSync(process.env.DS_E2E_PIDS, `${child.pid}\n`);
    const log = { pid: child.pid, text: "" };
    this.logs.push(log);
    child.on("exit", () => this.children.delete(child));
    child.stderr.on("data", (chunk) => { log.text += chunk; });
    return within(START_TIMEOUT_MS, `livereplay serve (pid ${child.pid}) printing its address`,
      new Promise((done, fail) => {
        let out = "";
        child.stdout.on("data", (chunk) => {
          out += chunk;
          log.text += chunk;
          const line = out.split("\n")[0];
          if (out.includes("\n")) {
            const match = /^listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
            if (match) done({ child, url: match[1] });
            else fail(new Error(`unexpected first line from livereplay serve: ${line}`));
          }
        });
        child.once("error", fail);
        child.once("exit", (code, signal) =>
          fail(new Error(`livereplay serve exited (${code ?? signal}) before listening: ${log.text}`)));
      }));
  }

  /** SIGKILLs `child` and waits (bounded) until it is gone. */
  async kill(child) {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((done) => child.once("exit", done));
    process.kill(child.pid, "SIGKILL");
    await within(5_000, `pid ${child.pid} exiting after SIGKILL`, exited);
  }

  async stop() {
    for (const child of [...this.children]) {
      try {
        await this.kill(child);
      } catch (error) {
        console.error(`could not kill pid ${child.pid}: ${error.message}`);
      }
    }
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
