#!/usr/bin/env bash
# Builds and runs likes-api and likes-worker together in the foreground.
# Ctrl-C (or SIGTERM) stops both gracefully; if either exits, the other is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin likes-api --bin likes-worker
# Where cargo put them: CARGO_TARGET_DIR when set (relative to this
# directory, as cargo reads it), else ./target.
bin="${CARGO_TARGET_DIR:-target}/release"
export RUST_LOG="${RUST_LOG:-info}"
"$bin/likes-worker" &
worker=$!
"$bin/likes-api" &
api=$!
stop() { kill -TERM "$api" "$worker" 2>/dev/null || true; }
trap stop INT TERM
# Return when either exits, then stop the other and wait for both.
wait -n "$api" "$worker" || true
stop
wait "$api" "$worker" 2>/dev/null || true
