//! Bolide's FFI layer for DPDK (Debian's libdpdk 22.11): bindings generated at build time by
//! bindgen from an allowlist (EAL, ethdev set-up, mempools) plus a C shim (`src/shim.c`) for
//! the static-inline fast path: `bolide_rx_burst`/`bolide_tx_burst` (`rte_eth_rx_burst`,
//! `rte_eth_tx_burst`), mbuf alloc/free/mtod/append, and `bolide_errno` (`rte_errno`).
//!
//! Built with the `link` feature only; without it this crate is empty so the workspace builds
//! on machines without libdpdk. Safe wrappers live in `bolide-drivers` (`net::dpdk`).

#[cfg(feature = "link")]
#[allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code, clippy::all)]
mod bindings {
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

#[cfg(feature = "link")]
pub use bindings::*;
