//! Black-box interop test harness.
