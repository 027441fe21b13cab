#!/usr/bin/env bash
# Sink benchmark: rows/s the PostgreSQL and MariaDB sinks apply (inserts,
# then updates of every row) next to COPY / LOAD DATA of the same rows.
# Usage: scripts/bench-sink.sh [ROWS] [BATCH] (default 1000000 5000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh up >/dev/null
cargo build --release -p backflow-e2e --bin bench_sink
exec target/release/bench_sink "$@"
