#!/usr/bin/env bash
# Interleaves lapin and amqprs runs of the same publish-confirm loop, first
# on a quiet host, then with two busy-looping processes taking the cores
# (as the api, load generator, broker and database do in `make bench`).
# Usage: run.sh [SECONDS per run, default 5] [PAIRS, default 2]
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --locked --quiet
bin=target/release/amqp-client-rounds
seconds=${1:-5}
pairs=${2:-2}
hogs=()
stop_hogs() { for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done; hogs=(); }
trap stop_hogs EXIT
for load in quiet busy; do
  if [ "$load" = busy ]; then
    for _ in 1 2; do (while :; do :; done) & hogs+=($!); done
  fi
  for _ in $(seq "$pairs"); do
    for client in lapin amqprs; do
      printf '%s\t' "$load"
      "$bin" "$client" "$seconds"
    done
  done
  stop_hogs
done
