#!/usr/bin/env python3
"""Markdown table of a bench-batch run: reads the likes-loadtest JSON reports
that scripts/bench-batch.sh left in a directory (<workload>-fixed-<size>.json,
<workload>-adaptive.json) and prints, per workload, each point's persisted/s,
flush latency and peak RSS, then the adaptive rate as a share of the best
fixed size's. Usage: bench_batch_table.py DIR
"""

import json
import re
import sys
from pathlib import Path

NAME = re.compile(r"^(?P<workload>[a-z]+)-(?:fixed-(?P<size>\d+)|(?P<adaptive>adaptive))$")

WORKLOADS = {
    "hot": "one hot post (--hot-fraction 1.0)",
    "spread": "likes over 100,000 posts (--posts 100000 --hot-fraction 0)",
}


def load(path):
    """The report, or None when the run left none (it failed to start)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def passed(verification):
    """As likes-loadtest's Verification::passed."""
    return all(
        verification.get(field, 0) == 0
        for field in (
            "missing",
            "wrong_state",
            "unexpected",
            "count_mismatches",
            "counter_invariant_mismatches",
        )
    )


def ms(micros):
    return f"{micros / 1000:.1f}"


def row(label, report, best_rate):
    if report is None:
        return f"| {label} | failed to run (see the .log) | | | | | |"
    p = report["pipeline"]
    worker = p.get("worker") or {}
    flush = worker.get("flush_latency_us") or {}
    rate = p.get("persisted_per_s")
    verdict = "" if passed(p["verification"]) else " (verification FAILED)"
    share = f"{100 * rate / best_rate:.0f}%" if rate and best_rate else "-"
    rss = report.get("process_peak_rss_mib")
    return (
        f"| {label} | {f'{rate:.0f}' if rate is not None else 'not all persisted'}{verdict}"
        f" | {share}"
        f" | {ms(flush['p99']) if flush else '-'}"
        f" | {worker.get('mean_batch_size', 0):.0f} / {worker.get('final_batch_target', '-')}"
        f" | {worker.get('batches', '-')}"
        f" | {f'{rss:.0f}' if rss is not None else '-'} |"
    )


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    points = {}
    for path in sorted(Path(sys.argv[1]).glob("*.json")):
        match = NAME.match(path.stem)
        if match:
            key = "adaptive" if match["adaptive"] else int(match["size"])
            points.setdefault(match["workload"], {})[key] = load(path)

    summary = []
    for workload, runs in points.items():
        fixed = {size: r for size, r in runs.items() if size != "adaptive"}
        rates = {
            size: r["pipeline"]["persisted_per_s"]
            for size, r in fixed.items()
            if r and r["pipeline"].get("persisted_per_s")
        }
        best_size = max(rates, key=rates.get) if rates else None
        best_rate = rates.get(best_size)

        print(f"### {workload}: {WORKLOADS.get(workload, workload)}")
        print()
        print(
            "| batch | persisted/s | of best fixed | flush p99 ms"
            " | mean batch / final target | batches | peak RSS MiB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for size in sorted(fixed):
            label = f"**{size}**" if size == best_size else str(size)
            print(row(label, fixed[size], best_rate))
        if "adaptive" in runs:
            adaptive = runs["adaptive"]
            scenario = (adaptive or {}).get("scenario", {})
            label = (
                f"adaptive {scenario.get('batch_min_size', '?')}..{scenario.get('batch_size', '?')}"
                f", budget {scenario.get('flush_budget_ms', '?')} ms"
            )
            print(row(label, adaptive, best_rate))
            rate = adaptive and adaptive["pipeline"].get("persisted_per_s")
            if rate and best_rate:
                summary.append(
                    f"- **{workload}**: adaptive {rate:.0f}/s = {100 * rate / best_rate:.0f}%"
                    f" of the best fixed size ({best_size}: {best_rate:.0f}/s)"
                )
            else:
                summary.append(f"- **{workload}**: no adaptive or fixed rate to compare")
        print()

    if summary:
        print("Adaptive against the best fixed size:")
        print()
        print("\n".join(summary))
        print()
    print(
        "persisted/s counts from the first request to the last acknowledged one committed."
        " Flush is batch close to ack, over the batches of the run. Peak RSS is the whole"
        " load test process (load generator, api and worker together): an upper bound on"
        " the worker's memory."
    )


if __name__ == "__main__":
    main()
