// The Durable Streams conformance suite through its programmatic runner,
// with the subscription tests on (the packaged test-runner leaves them
// off). The server's base URL comes from CONFORMANCE_TEST_URL.
import { runConformanceTests } from "@durable-streams/server-conformance-tests";

const baseUrl = process.env.CONFORMANCE_TEST_URL;
if (!baseUrl) {
  throw new Error("set CONFORMANCE_TEST_URL to the server's base URL (http://127.0.0.1:PORT)");
}
runConformanceTests({ baseUrl, subscriptions: true });
