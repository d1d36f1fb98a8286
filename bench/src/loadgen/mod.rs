//! `bolide-bench`: a load generator for any Aerospike-protocol endpoint (a Bolide node or an
//! Aerospike server), driven through the official Rust client (`aerospike` 3.0 on tokio).
//!
//! - [`workload`]: operation mix (asbench `-w`, YCSB presets), key distribution, record layout
//!   (asbench `-o`);
//! - [`keys`]: uniform, zipfian and latest key choice;
//! - [`schedule`]: open-loop pacing and latency from the intended send time;
//! - [`stats`]: HdrHistograms per operation kind, errors by result code, per-second intervals;
//! - [`run`]: the load and run phases against a cluster;
//! - [`report`]: text and JSON output, CPU time, machine description;
//! - [`responder`]: a trivial in-process server, to measure the client's own ceiling.

pub mod keys;
pub mod report;
pub mod responder;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod workload;
