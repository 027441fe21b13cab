#!/usr/bin/env bash
# MySQL/MariaDB feed benchmark: rows/s from the binlog into Kafka vs
# mariadb-binlog (raw and --verbose) reading the same binlog range, and peak
# RSS, for inserts and updates in 10-row transactions and for one large
# transaction.
# Usage: scripts/bench-mysql-source.sh [INSERTS [UPDATES [BIG]]]
#        (defaults 1000000 200000 1000000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/services.sh up >/dev/null
cargo build --release -p backflow --bin backflow -p backflow-e2e --bin bench_mysql_source
exec target/release/bench_mysql_source "$@"
