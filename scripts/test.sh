#!/usr/bin/env bash
# Runs every test: unit and property tests, the channel on a virtual clock, and the interop
# suite, which drives the release binary with reference clients (installed first if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-tools.sh

# One release build serves the binary under test and every test harness.
cargo build --release --locked -p gateway

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# --no-fail-fast: one failing test binary must not hide the results of the others.
# The interop tests spend most of their time waiting on the processes they drive, so they
# run two per core (every test has its own gateway, ports, client ids and topics);
# RUST_TEST_THREADS set by the caller wins.
RUST_TEST_THREADS=${RUST_TEST_THREADS:-$(($(nproc) * 2))} \
    cargo test --release --locked --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# The vendored DTLS engine's own tests, on the crypto backend the gateway uses
# (vendor/dimpl/README.md says what was changed there).
cargo test --locked --manifest-path vendor/dimpl/Cargo.toml --target-dir target/vendor-dimpl \
    --lib --no-default-features --features rust-crypto 2>&1 | tee -a "$log" || status=$?
# One closing line for the whole run, since cargo prints one per test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
