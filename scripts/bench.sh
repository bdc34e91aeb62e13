#!/usr/bin/env bash
# make bench: every figure of BENCHMARKS.md, measured in one run on this
# machine, with the ceiling measured right before so the figures read as
# ratios (the machine is shared and noisy; absolute numbers drift).
# Results land in target/bench/*.json|txt; a markdown summary is printed.
# Takes about 8 minutes on the 2-core development machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench
mkdir -p "$out"
export RUST_LOG=warn
cargo build --release --locked --bin likes-api --bin likes-worker --bin likes-loadtest --bin likes-readbench
lt=target/release/likes-loadtest

echo "== 1/6 ceiling: RabbitMQ + PostgreSQL alone (../shared/ceiling)" >&2
# Run from its own directory, so this workspace's .cargo/config.toml (tokio
# unstable) does not reach the ceiling's build: it stays as its authors built it.
(cd ../shared/ceiling && ./run.sh) | tee "$out/ceiling.txt" >&2
echo "== 2/6 default scenario (100,000 likes, 64 callers, 90% on one post)" >&2
$lt --json --chart "$out/default.svg" > "$out/default.json"
echo "== 3/6 direct baseline: one transaction per like" >&2
$lt --likes "${BENCH_BASELINE_LIKES:-20000}" --baseline direct --json > "$out/baseline.json"
rate=$(python3 -c "import json;print(int(json.load(open('$out/default.json'))['pipeline']['persisted_per_s']/2))")
echo "== 4/6 open loop at half the sustained rate ($rate/s)" >&2
$lt --rate "$rate" --duration 20 --json > "$out/open-loop.json"
echo "== 5/6 1,000,000 likes" >&2
$lt --likes 1000000 --json > "$out/million.json"

echo "== 6/6 processes: api + worker (batch 5000), 1000 concurrent callers" >&2
db=likes_bench
queue=likes.bench.events
export LIKES__DATABASE__URL="postgres://postgres@127.0.0.1:5432/$db"
export LIKES__AMQP__QUEUE=$queue LIKES__AMQP__DEAD_LETTER_QUEUE=likes.bench.dead
export LIKES__API__LISTEN=127.0.0.1:50151 LIKES__API__METRICS_LISTEN=127.0.0.1:9564
export LIKES__WORKER__METRICS_LISTEN=127.0.0.1:9565 LIKES__WORKER__BATCH_SIZE=5000
reset() {
  psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
  rabbitmqctl -q delete_queue $queue >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue likes.bench.dead >/dev/null 2>&1 || true
}
reset
target/release/likes-worker & worker=$!
target/release/likes-api & api=$!
stop() { kill -TERM "$api" "$worker" 2>/dev/null || true; wait "$api" "$worker" 2>/dev/null || true; reset; }
trap stop EXIT
for _ in $(seq 100); do target/release/likes-api --health-check 2>/dev/null && break; sleep 0.2; done
# CPU seconds (user + system) a process has used, for the cost per like.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
broker=$(pgrep -o beam.smp || echo "")
before="$(cpu $api) $(cpu $worker) ${broker:+$(cpu $broker)}"
$lt --target 127.0.0.1:50151 --database-url "$LIKES__DATABASE__URL" --queue $queue \
  --likes 200000 --concurrency 1000 --json > "$out/processes.json"
after="$(cpu $api) $(cpu $worker) ${broker:+$(cpu $broker)}"
hwm() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
echo "{\"api_peak_rss_kib\": $(hwm $api), \"worker_peak_rss_kib\": $(hwm $worker)}" > "$out/memory.json"
python3 - "$before" "$after" > "$out/cpu.json" <<'PY'
import json, sys
b, a = ([float(x) for x in s.split()] for s in sys.argv[1:3])
names = ["api", "worker", "broker"][: len(a)]
print(json.dumps({f"{n}_cpu_s": round(y - x, 2) for n, x, y in zip(names, b, a)}))
PY
curl_metrics() { python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://$1/metrics').read().decode())"; }
curl_metrics "$LIKES__WORKER__METRICS_LISTEN" > "$out/worker-metrics.txt"
hot=$(psql -h 127.0.0.1 -U postgres -d $db -tAc "SELECT post_id FROM like_counts ORDER BY count DESC LIMIT 1")
cold=$(psql -h 127.0.0.1 -U postgres -d $db -tAc "SELECT post_id FROM like_counts ORDER BY count ASC LIMIT 1")
target/release/likes-readbench --target 127.0.0.1:50151 --calls 2000 --post "$hot" --post "$cold" > "$out/reads.txt"
stop
trap - EXIT
python3 scripts/bench_summary.py "$out"
