//! Bolide backup and restore: `bolide-backup backup` writes a namespace to asbackup-compatible
//! .asb files through partition scans; `bolide-backup restore` writes them back. Both talk the
//! wire protocol through the official Rust client, so they work against a Bolide node and a
//! real Aerospike server alike.
#![forbid(unsafe_code)]

pub mod asb;
pub mod backup;
pub mod catalogue;
pub mod convert;
pub mod frame;
pub mod policy;
pub mod restore;
pub mod state;
pub mod target;
