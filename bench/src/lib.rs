//! Bolide benchmarks.
