// Compares a vitest JSON report of the conformance suite with the list of
// known failures (known-failures.txt: one full test name a line, `#`
// comments). Exits non-zero if a test outside the list failed (a
// regression), or a listed test passed (the list must shrink with the
// work). Prints the counts either way.
import { readFileSync } from "node:fs";

const [reportPath, listPath] = process.argv.slice(2);
if (!reportPath || !listPath) {
  console.error("usage: node check.mjs REPORT.json known-failures.txt");
  process.exit(2);
}
const report = JSON.parse(readFileSync(reportPath, "utf8"));
const known = new Set(
  readFileSync(listPath, "utf8")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith("#")),
);
const outcomes = new Map();
for (const file of report.testResults) {
  for (const test of file.assertionResults) outcomes.set(test.fullName, test);
}
const failed = [...outcomes.values()].filter((test) => test.status === "failed");
const passed = [...outcomes.values()].filter((test) => test.status === "passed");
const unexpected = failed.filter((test) => !known.has(test.fullName));
const fixed = passed.filter((test) => known.has(test.fullName));
const missing = [...known].filter((name) => !outcomes.has(name));
// A suite file that failed to load has no tests to count: never green.
const broken = report.testResults.filter((file) => file.status === "failed" && file.assertionResults.length === 0);

for (const test of unexpected) {
  console.log(`FAILED (not a known failure): ${test.fullName}`);
  console.log(`  ${(test.failureMessages[0] || "").split("\n")[0]}`);
}
for (const test of fixed) console.log(`PASSED (still listed as known-failing, remove it): ${test.fullName}`);
for (const name of missing) console.log(`LISTED but not in the suite: ${name}`);
for (const file of broken) console.log(`SUITE FILE FAILED TO RUN: ${file.name}: ${file.message}`);
console.log(
  `conformance: ${passed.length} passed, ${failed.length} failed (${failed.length - unexpected.length} known), ` +
    `${outcomes.size} tests, ${known.size} listed as known failures`,
);
process.exit(unexpected.length || fixed.length || missing.length || broken.length ? 1 : 0);
