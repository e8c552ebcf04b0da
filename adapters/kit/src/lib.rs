//! The contract every adapter shares.
