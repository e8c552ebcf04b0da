#!/usr/bin/env bash
# Type-checks every fuzz target so they never rot. A check needs neither cargo-fuzz nor the
# sanitizer build, which would double CI's compile time; fuzz/README.md says how to fuzz.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
cargo check --locked --bins
