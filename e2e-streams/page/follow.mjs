// The browser side of browser.test.mjs: follows the text stream named in the
// page's query (`?stream=URL`) with the official client in SSE mode and shows
// its text as it arrives. The test reads the result from the DOM.
//
// Client 0.2.6 ends a session whose SSE response is cut mid-body (the server
// died) instead of reconnecting, so the page keeps the offset of the last
// chunk it showed and opens a new session from there: a chunk's offset is
// exactly where its text ends, so nothing is skipped or shown twice.

import { stream } from "@durable-streams/client";

/** How many times a failed session is resumed before the page gives up. */
const MAX_RESUMES = 20;

const url = new URLSearchParams(location.search).get("stream");
const shown = document.getElementById("text");
const status = document.getElementById("status");

async function follow() {
  let offset;
  let resumes = 0;
  for (;;) {
    status.textContent = `following ${url} (SSE), resumed ${resumes} times`;
    try {
      const response = await stream({
        url,
        live: "sse",
        offset,
        // Reconnect quickly while the server is down (the default backoff grows to 60 s).
        backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 1.5, maxRetries: 200 },
      });
      response.subscribeText(async (chunk) => {
        shown.textContent += chunk.text;
        offset = chunk.offset;
      });
      await response.closed;
      return;
    } catch (error) {
      if (++resumes > MAX_RESUMES) throw error;
      document.body.dataset.resumes = String(resumes);
      await new Promise((done) => setTimeout(done, 50));
    }
  }
}

follow().catch((error) => {
  status.textContent = `error: ${error}`;
  document.body.dataset.error = String(error);
});
