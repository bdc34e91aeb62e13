#!/usr/bin/env bash
# make bench-batch: sweeps the worker's fixed batch size with likes-loadtest
# on two workloads, runs the adaptive mode on both, and prints a markdown
# table: persisted/s end to end, flush latency p99, peak RSS, and the
# adaptive rate as a share of the best fixed size's.
#
# Every point is a likes-loadtest process of its own (api and worker
# in-process, fresh database and queues), so its peak RSS is its own. That
# RSS covers the load generator and the api too: an upper bound on the
# worker's memory, not the worker alone.
#
# Environment:
#   BENCH_LIKES         requests per point (default 30000)
#   BENCH_SIZES         fixed batch sizes (default "10 50 100 250 500 1000 2500 5000")
#   BENCH_ADAPTIVE_MAX  worker.batch_size of the adaptive runs (default: the
#                       largest of BENCH_SIZES, so it can reach any of them)
#   BENCH_WORKLOADS     any of "hot spread" (default both): hot is every like
#                       on one post (--hot-fraction 1.0), spread is likes over
#                       100,000 posts (--posts 100000 --hot-fraction 0)
#   BENCH_SEED          workload seed, the same for every point (default 1)
#   BENCH_ARGS          more likes-loadtest options for every point
#   BENCH_OUT           where the JSON reports, logs and summary.md go
#                       (default <target dir>/bench-batch/<date-time>)
# Exits 1 if a point failed or did not verify; the table marks which.
set -euo pipefail
cd "$(dirname "$0")/.."

likes=${BENCH_LIKES:-30000}
read -r -a sizes <<<"${BENCH_SIZES:-10 50 100 250 500 1000 2500 5000}"
read -r -a workloads <<<"${BENCH_WORKLOADS:-hot spread}"
read -r -a extra <<<"${BENCH_ARGS:-}"
seed=${BENCH_SEED:-1}
largest=$(printf '%s\n' "${sizes[@]}" | sort -n | tail -n 1)
adaptive_max=${BENCH_ADAPTIVE_MAX:-$largest}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
out=${BENCH_OUT:-$target_dir/bench-batch/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"

cargo build --release --locked -p likes-loadtest
bin=$target_dir/release/likes-loadtest

workload_args() {
    case $1 in
    hot) echo "--hot-fraction 1.0" ;;
    spread) echo "--posts 100000 --hot-fraction 0" ;;
    *)
        echo "unknown workload $1 (hot or spread)" >&2
        exit 2
        ;;
    esac
}

points=$((${#workloads[@]} * (${#sizes[@]} + 1)))
echo "bench-batch: $points points of $likes requests, results in $out" >&2
failed=0
done_points=0
# run_point NAME ARGS...: one likes-loadtest run, its JSON report in NAME.json.
run_point() {
    local name=$1
    shift
    done_points=$((done_points + 1))
    printf '[%2d/%d] %-22s ' "$done_points" "$points" "$name" >&2
    local status=0
    "$bin" --json --likes "$likes" --seed "$seed" "$@" ${extra[@]+"${extra[@]}"} \
        >"$out/$name.json" 2>"$out/$name.log" || status=$?
    case $status in
    0) ;;
    1) failed=1 && printf 'VERIFICATION FAILED ' >&2 ;;
    *) failed=1 && printf 'FAILED (exit %d, see %s) ' "$status" "$out/$name.log" >&2 ;;
    esac
    python3 - "$out/$name.json" >&2 <<'EOF'
import json, sys
try:
    with open(sys.argv[1]) as f:
        p = json.load(f)["pipeline"]
except (OSError, ValueError, KeyError):
    print("no report")
    sys.exit(0)
rate = p.get("persisted_per_s")
print(f"{rate:.0f} persisted/s" if rate is not None else "not all persisted")
EOF
}

for workload in "${workloads[@]}"; do
    read -r -a args <<<"$(workload_args "$workload")"
    for size in "${sizes[@]}"; do
        run_point "$(printf '%s-fixed-%05d' "$workload" "$size")" "${args[@]}" --batch-size "$size"
    done
    run_point "$workload-adaptive" "${args[@]}" --batch-mode adaptive --batch-size "$adaptive_max"
done

{
    echo "Batch size sweep: $likes requests per point, seed $seed, $(nproc) cores," \
        "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%Y-%m-%dT%H:%MZ)."
    echo
    python3 scripts/bench_batch_table.py "$out"
} | tee "$out/summary.md"
exit "$failed"
