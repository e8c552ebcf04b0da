#!/usr/bin/env bash
# Builds every cargo-fuzz target so they never rot. The toolchain here is stable: sanitizer
# flags need RUSTC_BOOTSTRAP. To fuzz: RUSTC_BOOTSTRAP=1 cargo fuzz run mqtt_decode
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz build
