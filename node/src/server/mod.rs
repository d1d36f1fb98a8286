//! The Aerospike-protocol server: command semantics ([`exec`]) and, later in this module, the
//! per-core workers that drive the shards from client connections.

pub mod exec;
