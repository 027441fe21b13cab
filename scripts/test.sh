#!/usr/bin/env bash
# The test command: starts the real services, builds the binary the
# end-to-end tests run, then runs the whole workspace's tests.
# Extra arguments go to the test runner (e.g. `scripts/test.sh -p backflow`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh up
# Test databases and replication slots left by an earlier run that was
# killed: an abandoned slot holds WAL and a place in max_replication_slots.
# Nothing of this run exists yet.
psql -h 127.0.0.1 -U postgres -d postgres -XAtq >/dev/null <<'SQL'
SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
 WHERE database LIKE 'bf\_%' AND active_pid IS NOT NULL;
SELECT pg_sleep(0.5);
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
 WHERE database LIKE 'bf\_%' AND NOT active;
SQL
for db in $(psql -h 127.0.0.1 -U postgres -d postgres -XAtq \
    -c "SELECT datname FROM pg_database WHERE datname LIKE 'bf\_%'"); do
  psql -h 127.0.0.1 -U postgres -d postgres -XAtq -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
done
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
