#!/usr/bin/env bash
# backflow beside what users would run instead, on the same broker and the
# same backlog, in one run: Debezium's connectors (PostgreSQL 3.6.1,
# MariaDB 3.5.0) on a Kafka Connect 4.1.1 standalone worker, with their
# default settings and the JSON converter with schemas (Confluent's Avro
# converter is not on Maven Central), and the limits of this machine
# (pg_recvlogical, mariadb-binlog).
#
# Usage: scripts/bench-peers.sh [ROWS [UPDATES [BIG]]]
#        (defaults 1000000 200000 1000000: the backlogs of
#        scripts/bench-pg-source.sh and scripts/bench-mysql-source.sh,
#        which print the figures).
#
# The peers' jars come from Maven Central (scripts/peers/pom.xml) into
# $BACKFLOW_CACHE/peers (default ~/.cache/backflow/peers), once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
CACHE=${BACKFLOW_CACHE:-$HOME/.cache/backflow}
LIBS=$CACHE/peers/libs

log() { printf '[bench-peers] %s\n' "$*" >&2; }

scripts/services.sh up >/dev/null
if [ ! -f "$LIBS/connect-runtime-4.1.1.jar" ]; then
  log "fetching Kafka Connect and Debezium from Maven Central into $LIBS"
  rm -rf "$LIBS.partial"
  mkdir -p "$CACHE/peers"
  (cd "$CACHE/peers" && mvn -q -B -f "$ROOT/scripts/peers/pom.xml" \
    dependency:copy-dependencies -DoutputDirectory="$LIBS.partial")
  mv "$LIBS.partial" "$LIBS"
fi
if [ ! -f "$LIBS-mariadb/connect-runtime-4.1.1.jar" ]; then
  log "fetching Kafka Connect and Debezium's MariaDB connector from Maven Central into $LIBS-mariadb"
  rm -rf "$LIBS-mariadb.partial"
  (cd "$CACHE/peers" && mvn -q -B -f "$ROOT/scripts/peers/mariadb/pom.xml" \
    dependency:copy-dependencies -DoutputDirectory="$LIBS-mariadb.partial")
  mv "$LIBS-mariadb.partial" "$LIBS-mariadb"
fi
cargo build --release -p backflow --bin backflow -p backflow-e2e \
  --bin bench_pg_source --bin bench_mysql_source

log "PostgreSQL feed: backflow, Debezium and pg_recvlogical on one backlog"
BENCH_PEERS_LIBS=$LIBS target/release/bench_pg_source "$@"
log "MariaDB feed: backflow, Debezium and mariadb-binlog on one backlog"
BENCH_PEERS_MARIADB_LIBS=$LIBS-mariadb target/release/bench_mysql_source "$@"
