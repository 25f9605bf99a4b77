//! Shared harness for Drawbridge's cross-crate and multi-process tests.
