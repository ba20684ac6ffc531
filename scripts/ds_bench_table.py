#!/usr/bin/env python3
"""The markdown table of scripts/ds_bench.sh from its raw.jsonl.

One table per mode (fsync'd, fastest): a row per figure, a column per
server, each cell the median of the runs with their range, and the last
column livereplay's figure divided by the best peer's (peers: every server
but livereplay and the floor). ↑ marks figures where more is better, ↓
where less is.

    ds_bench_table.py raw.jsonl > results.md
    ds_bench_table.py --check raw.jsonl   # exit 1 unless every workload of
                                          # livereplay was measured cleanly
"""

import json
import statistics
import sys

OURS = "livereplay"
FLOOR = "floor"
SERVER_ORDER = [FLOOR, OURS, "durable-streams", "durable-streams-server", "node"]
MODE_TITLES = {
    "fsync": "fsync'd: an append is acknowledged once it is on disk",
    "fast": "fastest mode of each server",
}


def dig(record, path):
    for part in path.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def figures(records):
    """(label, higher_is_better, selector, path, scale, decimals)."""
    rows = [
        ("1 stream, 64 conns: appends/s", True, ("append-one", None), "appends_per_s", 1, 0),
        ("1 stream: append p50 ms", False, ("append-one", None), "latency.p50_ms", 1, 2),
        ("1 stream: append p99 ms", False, ("append-one", None), "latency.p99_ms", 1, 2),
    ]
    counts = sorted({r.get("streams_asked") for r in records if r["workload"] == "spread"})
    for count in counts:
        tag = f"{count:,} streams"
        sel = ("spread", count)
        rows += [
            (f"{tag}: streams created", True, sel, "streams", 1, 0),
            (f"{tag}: appends/s", True, sel, "appends_per_s", 1, 0),
            (f"{tag}: appends failed", False, sel, "errors", 1, 0),
            (f"{tag}: append p50 ms", False, sel, "latency.p50_ms", 1, 2),
            (f"{tag}: append p99 ms", False, sel, "latency.p99_ms", 1, 2),
            (f"{tag}: server RSS MiB", False, sel, "rss_bytes", 1 / 2**20, 0),
            (f"{tag}: open fds", False, sel, "open_fds", 1, 0),
            (f"{tag}: RSS per idle stream, bytes", False, sel, "rss_idle_per_stream", 1, 0),
        ]
    rows += [
        ("upstream 1: append -> long-poll p50 ms", False, ("longpoll", None), "rtt.p50_ms", 1, 2),
        ("upstream 1: append -> long-poll p99 ms", False, ("longpoll", None), "rtt.p99_ms", 1, 2),
        ("upstream 2: 1000 x 100 B (75 at once) msg/s", True, ("small", None), "median_msgs_per_s", 1, 0),
        ("upstream 3: 50 x 1 MiB (15 at once) msg/s", True, ("large", None), "median_msgs_per_s", 1, 1),
        ("SSE readers connected", True, ("sse", None), "readers_connected", 1, 0),
        ("SSE: append -> last reader p50 ms", False, ("sse", None), "to_last_reader.p50_ms", 1, 2),
        ("SSE: append -> last reader p99 ms", False, ("sse", None), "to_last_reader.p99_ms", 1, 2),
        ("SSE: append -> each reader p99 ms", False, ("sse", None), "to_each_reader.p99_ms", 1, 2),
        ("SSE: deliveries missing", False, ("sse", None), "deliveries_missing", 1, 0),
        ("catch-up from offset -1: GiB/s", True, ("catchup", None), "median_gib_per_s", 1, 2),
    ]
    return rows


def values(records, mode, server, selector, path):
    workload, streams = selector
    found = []
    for r in records:
        if r.get("mode") != mode or r.get("server") != server or r["workload"] != workload:
            continue
        if streams is not None and r.get("streams_asked") != streams:
            continue
        v = dig(r, path)
        if isinstance(v, (int, float)):
            found.append(float(v))
    return found


def cell(found, scale, decimals):
    if not found:
        return None, "–"
    found = [v * scale for v in found]
    mid = statistics.median(found)
    text = f"{mid:,.{decimals}f}"
    if len(found) > 1 and max(found) != min(found):
        text += f" ({min(found):,.{decimals}f}–{max(found):,.{decimals}f})"
    return mid, text


def table(records, mode):
    servers = [s for s in SERVER_ORDER if any(r.get("server") == s and r.get("mode") == mode for r in records)]
    peers = [s for s in servers if s not in (OURS, FLOOR)]
    lines = [f"### {MODE_TITLES.get(mode, mode)}", ""]
    lines.append("| figure | " + " | ".join(servers) + " | livereplay ÷ best peer |")
    lines.append("|---|" + "---|" * len(servers) + "---|")
    for label, higher, selector, path, scale, decimals in figures(records):
        mids = {}
        texts = []
        for server in servers:
            mid, text = cell(values(records, mode, server, selector, path), scale, decimals)
            mids[server] = mid
            texts.append(text)
        if all(t == "–" for t in texts):
            continue
        peer_values = [mids[p] for p in peers if mids.get(p) is not None]
        ratio = "–"
        ours = mids.get(OURS)
        if ours is not None and peer_values:
            best = max(peer_values) if higher else min(peer_values)
            if best > 0:
                ratio = f"{ours / best:.2f}×"
            elif ours == 0:
                ratio = "="
        arrow = "↑" if higher else "↓"
        lines.append(f"| {label} {arrow} | " + " | ".join(texts) + f" | {ratio} |")
    lines.append("")
    return lines


def inproc(records):
    runs = [r for r in records if r["workload"] == "inproc"]
    if not runs:
        return []
    lines = [
        "### In-process append seen by an HTTP long-poll reader (livereplay only: no peer has an in-process writer)",
        "",
        "| append | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    rows = (
        ("default.in_process", "`store.append` in the server's process (store defaults)"),
        ("default.http", "HTTP POST to the same server (store defaults)"),
        ("wake_on_dirty.in_process", "`store.append` in the server's process, `wake_on_dirty`"),
        ("wake_on_dirty.http", "HTTP POST to the same server, `wake_on_dirty`"),
    )
    for key, label in rows:
        found = {}
        for q in ("p50_ms", "p99_ms"):
            path = f"append_to_longpoll.{key}.{q}"
            found[q] = cell([dig(r, path) for r in runs if dig(r, path) is not None], 1, 2)[1]
        lines.append(f"| {label} | {found['p50_ms']} | {found['p99_ms']} |")
    lines.append("")
    return lines


def check(records):
    """Every workload of livereplay (fsync'd) measured, without errors."""
    problems = []
    ours = [r for r in records if r.get("server") == OURS and r.get("mode") == "fsync"]
    for workload in ("append-one", "spread", "longpoll", "small", "large", "sse", "catchup"):
        got = [r for r in ours if r["workload"] == workload]
        if not got:
            problems.append(f"{workload}: not measured")
        for r in got:
            if r.get("errors"):
                problems.append(f"{workload}: {r['errors']} failed appends")
            if workload == "sse" and (r.get("deliveries_missing") or r.get("readers_failed")):
                problems.append(f"sse: {r.get('deliveries_missing')} deliveries missing, {r.get('readers_failed')} readers failed")
    if not any(r["workload"] == "inproc" for r in records):
        problems.append("inproc: not measured")
    if not any(r.get("server") == FLOOR for r in records):
        problems.append("floor: not measured")
    for p in problems:
        print(f"ds-bench check: {p}", file=sys.stderr)
    return not problems


def main():
    args = sys.argv[1:]
    checking = "--check" in args
    args = [a for a in args if a != "--check"]
    with open(args[0]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if checking:
        ok = check(records)
        print(f"ds-bench check: {'ok' if ok else 'FAILED'} ({len(records)} results)")
        sys.exit(0 if ok else 1)
    out = []
    for mode in ("fsync", "fast"):
        if any(r.get("mode") == mode and r["workload"] != "inproc" for r in records):
            out += table(records, mode)
    out += inproc(records)
    print("\n".join(out))


if __name__ == "__main__":
    main()
