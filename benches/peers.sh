#!/usr/bin/env bash
# eventide against DuckDB on the same file, whole process each: the same tumbling 1m
# and sliding 5m/1m windows (count, sum, avg, min, max per device and type, events
# deduplicated by eventId) over events in the streaming-at-scale layout.
#
#   benches/peers.sh [EVENTS] [RUNS]      (default 1200000 events, 3 runs each)
#
# Builds eventide in release, installs DuckDB from PyPI into a venv under target/
# (once), generates the input with eventide-simulator, then runs the engines in turn.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1200000}
runs=${2:-3}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --workspace --bins --quiet
venv="$target/peers-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import duckdb" 2>/dev/null || "$venv/bin/pip" install --quiet duckdb
exec "$venv/bin/python" benches/peers.py --events "$events" --runs "$runs" \
    --eventide "$target/release/eventide" --simulator "$target/release/eventide-simulator"
