//! Configuration schema and loader.
