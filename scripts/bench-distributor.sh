#!/usr/bin/env bash
# Distributor benchmark: raw events/s in with 1, 10 and 100 shares of one
# dataset, next to a plain consumer of the same topic.
# Usage: scripts/bench-distributor.sh [EVENTS] (default 100000).
#
# By default each case runs on a fresh Apache Kafka broker of its own
# (scripts/services.sh fetches Kafka).
# Settings (environment):
#   BACKFLOW_BENCH_BROKERS  host:port of a Kafka broker to run every case
#                           against instead (shared by the cases; each case
#                           uses topics and a node code of its own), e.g. a
#                           real Apache Kafka where one can be installed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${BACKFLOW_BENCH_BROKERS:-}" ]; then
  scripts/services.sh up >/dev/null
fi
cargo build --release -p backflow --bin backflow -p backflow-e2e --bin bench_distributor
exec target/release/bench_distributor "$@"
