// The browser side of browser.test.mjs: follows the text stream named in the
// page's query (`?stream=URL`) with the official client in SSE mode and shows
// its text as it arrives. The test reads the result from the DOM.

import { stream } from "@durable-streams/client";

const url = new URLSearchParams(location.search).get("stream");
const shown = document.getElementById("text");
const status = document.getElementById("status");

async function follow() {
  status.textContent = `following ${url} (SSE)`;
  const response = await stream({ url, live: "sse" });
  response.subscribeText(async (chunk) => {
    shown.textContent += chunk.text;
    document.body.dataset.offset = chunk.offset;
  });
  await response.closed;
}

follow().catch((error) => {
  status.textContent = `error: ${error}`;
  document.body.dataset.error = String(error);
});
