#!/usr/bin/env python3
"""Draws the latency distributions the `latency` bench measured.

Reads the quantile CSVs `cargo bench --bench latency` writes to
`target/livereplay-bench/` and draws, on a "nines" percentile axis (p50,
p90, p99, p99.9, ...) with a log latency axis:

* left: append latency of livereplay and of seed 002's reference store,
  alone and while another thread replays the same session in a loop or
  paced (livereplay's reader cloning or lending the events);
* right: subscribe-to-delivery latency across threads.

Run by hand after the bench (needs matplotlib: `pip install matplotlib`):

    python3 scripts/plot_latency.py [--input target/livereplay-bench] [--output docs/append_latency.png]
"""

import argparse
import csv
import math
import pathlib
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

STYLES = {
    ("ours", "none"): ("livereplay, no reader", "tab:blue", "-"),
    ("ours", "replaying"): ("livereplay, reader replaying", "tab:blue", "--"),
    ("ours", "paced"): ("livereplay, reader paced (100/ms)", "tab:blue", ":"),
    ("ours-writer", "none"): ("livereplay SessionWriter, no reader", "tab:brown", "-"),
    ("ours-writer", "replaying"): ("livereplay SessionWriter, reader replaying", "tab:brown", "--"),
    ("ours-writer", "paced"): ("livereplay SessionWriter, reader paced", "tab:brown", ":"),
    ("ours-lending", "none"): ("livereplay, no reader (the lending runs' store)", "tab:orange", "-"),
    ("ours-lending", "replaying"): ("livereplay, lending reader replaying", "tab:orange", "--"),
    ("ours-lending", "paced"): ("livereplay, lending reader paced (100/ms)", "tab:orange", ":"),
    ("ours-unlapped", "none"): ("livereplay, ring never lapping, no reader", "tab:gray", "-"),
    ("ours-unlapped", "replaying"): ("livereplay, ring never lapping, reader replaying", "tab:gray", "--"),
    ("ours-unlapped", "paced"): ("livereplay, ring never lapping, reader paced", "tab:gray", ":"),
    ("reference", "none"): ("reference (seed 002), no reader", "tab:red", "-"),
    ("reference", "replaying"): ("reference (seed 002), reader replaying", "tab:red", "--"),
    ("reference", "paced"): ("reference (seed 002), reader paced", "tab:red", ":"),
    ("ours",): ("livereplay, next_timeout (no timer)", "tab:blue", "-"),
    ("ours-timed",): ("livereplay, next_timeout (10 s timeout)", "tab:cyan", "--"),
    ("reference",): ("reference (seed 002)", "tab:red", "-"),
    ("broadcast",): ("tokio broadcast, blocking_recv", "tab:green", "-"),
    ("ours-stream",): ("livereplay as a Stream", "tab:blue", ":"),
    ("broadcast-async",): ("tokio broadcast, recv().await", "tab:green", ":"),
    ("broadcast-control",): ("tokio broadcast again (A/A control)", "tab:olive", "-."),
    ("ours-coarse",): ("livereplay, next_timeout, CoarseClock", "tab:purple", "-"),
    ("ours-stream-coarse",): ("livereplay as a Stream, CoarseClock", "tab:purple", ":"),
}


def read_series(path, label_columns):
    """{label tuple: [(quantile, nanos)]}, the maximum (quantile 1) left out."""
    series = defaultdict(list)
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            quantile = float(row["quantile"])
            if quantile >= 1.0:
                continue
            label = tuple(row[column] for column in label_columns)
            series[label].append((quantile, int(row["nanos"])))
    return series


def nines(quantile):
    """0.9 -> 1, 0.99 -> 2, 0.999 -> 3: the tail gets room."""
    return -math.log10(1.0 - quantile)


def draw(axes, series, title):
    for label, points in sorted(series.items()):
        name, color, line = STYLES.get(label, (" ".join(label), None, "-"))
        points.sort()
        axes.plot(
            [nines(q) for q, _ in points],
            [nanos / 1000.0 for _, nanos in points],
            line,
            color=color,
            label=name,
            linewidth=1.6,
        )
    ticks = [0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999]
    axes.set_xticks([nines(q) for q in ticks])
    axes.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99", "p99.999"])
    rightmost = max(nines(q) for points in series.values() for q, _ in points)
    axes.set_xlim(left=nines(0.5), right=rightmost + 0.1)
    axes.set_yscale("log")
    axes.set_ylabel("latency (µs, log scale)")
    axes.set_xlabel("percentile")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="target/livereplay-bench")
    parser.add_argument("--output", default="docs/append_latency.png")
    args = parser.parse_args()
    source = pathlib.Path(args.input)
    append_csv = source / "append_latency.csv"
    delivery_csv = source / "delivery_latency.csv"
    missing = [str(p) for p in (append_csv, delivery_csv) if not p.exists()]
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run `cargo bench --bench latency` first")

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    draw(
        left,
        read_series(append_csv, ["design", "reader"]),
        "Append latency (back to back), alone and with a reader replaying",
    )
    draw(
        right,
        read_series(delivery_csv, ["design"]),
        "Append-to-delivery latency, subscriber parked on another thread",
    )
    figure.tight_layout()
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
