//! Shared code for Drawbridge's benchmarks (criterion suites under benches/benches, the end-to-end load generator).
