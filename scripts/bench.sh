#!/usr/bin/env bash
# End-to-end benchmark: department PostgreSQL -> node (feed, Apache Kafka
# broker, distributor) -> two district subscribers' PostgreSQL databases.
# Prints throughput (against pg_recvlogical and a raw COPY), end-to-end
# latency p50/p95/p99 at a steady rate, each backflow process's peak RSS and
# what the processes cost at rest.
# Usage: scripts/bench.sh [INSERTS [UPDATES [LATENCY_SECS [RATE]]]]
#        (defaults 1000000 200000 30 5000).
# Settings (environment):
#   BENCH_FLUSH_INTERVAL_MS  the subscribers' flush_interval_ms (unset:
#                            backflow's default)
#   BENCH_FETCH_WAIT_MS      the node's kafka.fetch_wait_ms and the
#                            subscribers' upstream.fetch_wait_ms (unset: 20)
#   BENCH_LINGER_MS          the node's producers' linger.ms (unset: 5)
#   BENCH_PARTITIONS         the node's kafka.partitions (unset: 1)
#   BENCH_STAGED=1           time the node alone, then the subscribers alone
#                            on the full share topics (the throughput phase)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh up >/dev/null
cargo build --release -p backflow --bin backflow -p backflow-e2e --bin bench_e2e
exec target/release/bench_e2e "$@"
