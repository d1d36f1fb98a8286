//! The Bolide storage node.
#![forbid(unsafe_code)]

pub mod digest;
pub mod particle;
pub mod record;
pub mod index;
