//! The DPDK backend's names in a build without the `dpdk` feature: opening a port fails with a
//! clear error, and a queue cannot exist, so the composition root needs no `#[cfg]`.

use super::DpdkConfig;
use crate::net::{ConnId, ListenOptions, ListenerId, NetError, NetEvent, NetQueue, NetStats, SendError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A DPDK port: none can be opened in this build.
#[derive(Debug)]
pub enum DpdkPort {}

impl DpdkPort {
    /// # Errors
    /// Always: this build has no DPDK.
    pub fn open(cfg: &DpdkConfig, _queues: u16) -> Result<Arc<DpdkPort>, NetError> {
        Err(NetError::other(
            format!("open DPDK port {}", cfg.port),
            "this build has no DPDK: build with `--features dpdk` (needs libdpdk-dev 22.11 and libclang)",
        ))
    }
}

/// A DPDK queue: none can exist in this build.
#[derive(Debug)]
pub enum DpdkNet {}

impl DpdkNet {
    /// # Errors
    /// Never returns: no port exists to make a queue of.
    pub fn new(port: Arc<DpdkPort>, _queue: u16) -> Result<DpdkNet, NetError> {
        match *port {}
    }
}

impl NetQueue for DpdkNet {
    fn listen(&mut self, _: SocketAddr, _: &ListenOptions) -> Result<(ListenerId, SocketAddr), NetError> {
        match *self {}
    }
    fn poll(&mut self, _: Duration) -> Result<(), NetError> {
        match *self {}
    }
    fn next_event(&mut self) -> Option<NetEvent<'_>> {
        match *self {}
    }
    fn send(&mut self, _: ConnId, _: Vec<u8>) -> Result<(), SendError> {
        match *self {}
    }
    fn set_recv_paused(&mut self, _: ConnId, _: bool) {
        match *self {}
    }
    fn close(&mut self, _: ConnId) {
        match *self {}
    }
    fn watch_fd(&mut self, _: std::os::fd::RawFd) -> Result<(), NetError> {
        match *self {}
    }
    fn stats(&self) -> NetStats {
        match *self {}
    }
}
