#!/usr/bin/env bash
# Distributor benchmark: raw events/s in with 1, 10 and 100 shares of one
# dataset, next to a plain consumer of the same topic.
# Usage: scripts/bench-distributor.sh [EVENTS] (default 100000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh up >/dev/null
cargo build --release -p backflow --bin backflow -p backflow-e2e --bin bench_distributor
exec target/release/bench_distributor "$@"
