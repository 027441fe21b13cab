#!/usr/bin/env bash
# The test command: starts the real services, builds the binary the
# end-to-end tests run, then runs the whole workspace's tests.
# Extra arguments go to the test runner (e.g. `scripts/test.sh -p backflow`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh up
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
