//! The Bolide storage node.
//!
//! Layers, bottom up: [`digest`] and [`particle`] (the data model of wire spec §3.5/§4),
//! [`record`] (the on-disk record and wblock formats), [`index`] (the RAM primary index),
//! [`cdt`] (list, map, bit and HLL operations),
//! [`shard`] (one core's log-structured store: write buffers, group commit, defrag, expiry,
//! cold start, fast restart), [`truncate`] (truncate cut-offs and their durable file).
//! [`config`] validates settings; [`clock`] abstracts time.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod datadir;
pub mod digest;
pub mod cdt;
pub mod index;
pub mod particle;
pub mod profile;
pub mod proto;
pub mod record;
pub mod server;
pub mod shard;
pub mod truncate;
