"""Prints the markdown summary of a `make bench` run (target/bench)."""
import json
import re
import sys
from pathlib import Path

out = Path(sys.argv[1])
load = lambda name: json.loads((out / name).read_text())
ceiling_line = next(l for l in (out / "ceiling.txt").read_text().splitlines() if l.startswith("RESULT"))
ceiling = float(ceiling_line.split()[2])
default = load("default.json")["pipeline"]
baseline = load("baseline.json")
open_loop = load("open-loop.json")["pipeline"]
million = load("million.json")["pipeline"]
processes = load("processes.json")["pipeline"]
memory = load("memory.json")
reads = [dict(kv.split("=") for kv in line.split()) for line in (out / "reads.txt").read_text().splitlines()]

cpu = load("cpu.json")
worker_metrics = (out / "worker-metrics.txt").read_text()
metric = lambda name: float(next(l.split()[-1] for l in worker_metrics.splitlines() if l.startswith(name + " ")))
ms = lambda us: f"{us / 1000:.1f} ms"
rate = default["persisted_per_s"]
pipe, direct = baseline["pipeline"], baseline["baseline"]
print(f"""| # | What | Measured | Bar | |
|---|---|---|---|---|
| 1 | end-to-end likes/s, default scenario / ceiling | {rate:,.0f} / {ceiling:,.0f} = **{rate / ceiling:.0%}** | ≥ 70% | {'ok' if rate / ceiling >= 0.7 else 'below'} |
| 2 | likes per database transaction (spike) | **{1 / default['transactions_per_like']:,.0f}** (direct: {1 / direct['transactions_per_like']:.2f}) | ≥ 100 | {'ok' if 1 / default['transactions_per_like'] >= 100 else 'below'} |
| 2 | pipeline vs direct, throughput / transactions per like | {pipe['persisted_per_s'] / direct['persisted_per_s']:.1f}× / {direct['transactions_per_like'] / pipe['transactions_per_like']:,.0f}× fewer | | |
| 3 | Like p99 at half the sustained rate ({open_loop['accepted_per_s']:,.0f}/s, open loop) | **{ms(open_loop['like_latency_us']['p99'])}** (p50 {ms(open_loop['like_latency_us']['p50'])}) | ≤ 50 ms | {'ok' if open_loop['like_latency_us']['p99'] <= 50000 else 'above'} |
| 4 | end-to-end likes/s at 1,000,000 vs 100,000 | {million['persisted_per_s']:,.0f} vs {rate:,.0f} = **{million['persisted_per_s'] / rate:.0%}** | within 20% | {'ok' if abs(million['persisted_per_s'] / rate - 1) <= 0.2 else 'outside'} |
| 4 | GetLikeCount p50/p99, post with {reads[0]['count']} likes vs {reads[1]['count']} | {ms(int(reads[0]['p50_us']))}/{ms(int(reads[0]['p99_us']))} vs {ms(int(reads[1]['p50_us']))}/{ms(int(reads[1]['p99_us']))} | flat | |
| 5 | worker peak RSS at batch 5000 | **{memory['worker_peak_rss_kib'] / 1024:.0f} MiB** | < 100 MiB | {'ok' if memory['worker_peak_rss_kib'] < 100 * 1024 else 'above'} |
| 5 | api peak RSS, 1000 concurrent callers ({processes['accepted_per_s']:,.0f} likes/s) | **{memory['api_peak_rss_kib'] / 1024:.0f} MiB** | < 100 MiB | {'ok' if memory['api_peak_rss_kib'] < 100 * 1024 else 'above'} |
""")
print(f"verification: default {default['verification']['missing'] + default['verification']['wrong_state'] == 0 and 'passed'}, "
      f"million {million['verification']['missing'] + million['verification']['wrong_state'] == 0 and 'passed'}, "
      f"processes {processes['verification']['missing'] + processes['verification']['wrong_state'] == 0 and 'passed'}")

likes = processes["acknowledged"]
flush_s = metric("likes_batch_flush_seconds_sum")
print(f"""
Cost per like, api and worker as processes ({likes:,} likes, 1000 callers, batch 5000):

| process | CPU µs per like | likes/s per core at that cost |
|---|---|---|""")
for name in ("api", "worker", "broker"):
    if f"{name}_cpu_s" in cpu:
        us = cpu[f"{name}_cpu_s"] / likes * 1e6
        print(f"| {name} | {us:.0f} | {1e6 / us:,.0f} |")
print(f"| worker busy writing | {flush_s / likes * 1e6:.0f} µs of flush time per like | {likes / flush_s:,.0f} likes/s while flushing |")
