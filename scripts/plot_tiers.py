#!/usr/bin/env python3
"""Draws the durable tiers' charts from the figures BENCHMARKS.md quotes.

Reads `docs/figures/tiers.csv` (one row per figure: the chart, the series,
the label, the median and its range over the runs, and the BENCHMARKS.md
section it comes from) and writes:

* `docs/tiers_throughput.png`: events/s the persister wrote to each log,
  one session and 64, with the range over runs;
* `docs/delivery_latency.png`: append on node A to delivery on node B,
  p50 and p99 on a log axis, beside each log's own notification floor.

The CSV is updated by hand when BENCHMARKS.md's tables are: the charts
never show a figure the tables do not. Needs matplotlib
(`pip install matplotlib`):

    python3 scripts/plot_tiers.py
"""

import csv
import pathlib
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def rows(path):
    """The CSV's figures, without its comment lines."""
    with open(path, newline="", encoding="utf-8") as source:
        lines = [line for line in source if not line.startswith("#")]
    names = ["chart", "series", "label", "value", "low", "high", "section"]
    for row in csv.DictReader(lines, fieldnames=names):
        for field in ("value", "low", "high"):
            row[field] = float(row[field])
        yield row


def bars_with_ranges(ax, labels, series, unit_scale):
    """Grouped horizontal bars, one group per label, error bars = range."""
    height = 0.8 / len(series)
    for index, (name, figures) in enumerate(series.items()):
        ys = [i + index * height for i in range(len(labels))]
        values = [figures[label]["value"] / unit_scale for label in labels]
        lows = [(figures[label]["value"] - figures[label]["low"]) / unit_scale for label in labels]
        highs = [(figures[label]["high"] - figures[label]["value"]) / unit_scale for label in labels]
        ax.barh(ys, values, height=height, xerr=[lows, highs], capsize=3, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels)
    ax.invert_yaxis()


def grouped(figures):
    """`{series: {label: row}}` and the labels in the CSV's order."""
    series = defaultdict(dict)
    labels = []
    for row in figures:
        series[row["series"]][row["label"]] = row
        if row["label"] not in labels:
            labels.append(row["label"])
    return series, labels


def throughput(figures, output):
    series, labels = grouped(figures)
    fig, ax = plt.subplots(figsize=(9, 4))
    bars_with_ranges(ax, labels, series, 1e6)
    ax.set_xlabel("million events/s written to the log (median; bar: range over runs)")
    ax.set_title("The persister's throughput per log, 64-byte payloads")
    ax.legend(loc="lower right")
    fig.text(0.01, 0.01, "Runs from different sessions and loads: see BENCHMARKS.md per log.", fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(output, dpi=110)


def delivery(figures, output):
    series, labels = grouped(figures)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    height = 0.4
    for index, name in enumerate(("p50", "p99")):
        for i, label in enumerate(labels):
            row = series[name].get(label)
            if row is None:
                continue
            ax.barh(
                i + index * height,
                row["value"],
                height=height,
                xerr=[[row["value"] - row["low"]], [row["high"] - row["value"]]],
                capsize=3,
                color=f"C{index}",
            )
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{i}") for i in range(2)]
    ax.legend(handles, ["p50", "p99"], loc="upper right")
    ax.set_yticks([i + height / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms from the append on node A to delivery on node B (log scale; bar: range over runs)")
    ax.set_title("Two nodes over one log: A to B delivery")
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main():
    figures = list(rows(ROOT / "docs" / "figures" / "tiers.csv"))
    throughput([r for r in figures if r["chart"] == "throughput"], ROOT / "docs" / "tiers_throughput.png")
    delivery([r for r in figures if r["chart"] == "delivery"], ROOT / "docs" / "delivery_latency.png")
    print("wrote docs/tiers_throughput.png and docs/delivery_latency.png")


if __name__ == "__main__":
    main()
