#!/usr/bin/env bash
# Runs every test: unit and property tests, the channel on a virtual clock, and the interop
# suite, which drives the release binary with reference clients (installed first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-tools.sh

# One release build serves the binary under test and every test harness.
cargo build --release --locked -p gateway
cargo test --release --locked --workspace
