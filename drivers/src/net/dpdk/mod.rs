//! The DPDK network backend: one NIC receive/transmit queue pair per core, polled, with a
//! user-space TCP stack (smoltcp, one `Interface` per core) behind [`super::NetQueue`]
//! (DESIGN.md, "Drivers"; issue 15).
//!
//! * [`DpdkConfig`] is plain data (always built): what a profile's `[network] driver = "dpdk"`
//!   says.
//! * With the `dpdk` cargo feature, [`DpdkPort`] initialises DPDK's EAL once per process,
//!   configures the port with one queue pair and one mbuf pool per worker and starts it, and
//!   [`DpdkNet`] is one worker's queue: ARP, IPv4, ICMP echo and TCP by smoltcp over the
//!   queue's mbufs (received frames are handed to the stack straight from the mbuf; frames to
//!   send are built straight into a fresh mbuf).
//!
//! # Limits (measured and explained in docs/HARDWARE.md)
//! * smoltcp looks up the socket of every segment by a linear scan of the core's sockets, so
//!   the per-core connection limit ([`DpdkConfig::max_connections_per_queue`]) stays in the
//!   hundreds; it has no SACK and no TCP timestamps, so a lossy path recovers slowly.
//! * The stack busy-polls: [`DpdkNet::can_sleep`] is false, the core spins.
//! * Each core's `Interface` has its own ARP cache, filled from the ARP requests it sees. With
//!   several queues on one port an ARP reply can land on another core's queue; with several
//!   workers give each its own port, or expect the first connection of a new peer to wait for a
//!   retried ARP.

use std::net::Ipv4Addr;

#[cfg(feature = "dpdk")]
mod device;
#[cfg(feature = "dpdk")]
mod eal;
#[cfg(feature = "dpdk")]
mod queue;

#[cfg(not(feature = "dpdk"))]
mod absent;
#[cfg(not(feature = "dpdk"))]
pub use absent::{DpdkNet, DpdkPort};
#[cfg(feature = "dpdk")]
pub use eal::DpdkPort;
#[cfg(feature = "dpdk")]
pub use queue::DpdkNet;

/// Whether this build has the DPDK backend (the `dpdk` cargo feature).
pub const AVAILABLE: bool = cfg!(feature = "dpdk");

/// How to bring up a DPDK port (a profile's `[network]` section with `driver = "dpdk"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DpdkConfig {
    /// The port: a PCI address (`0000:03:00.0`, bound to `vfio-pci`) or a virtual device with
    /// its arguments (`net_af_packet0,iface=veth0`, `net_tap0,iface=dtap0`).
    pub port: String,
    /// This node's IPv4 address on the port and the prefix length of its subnet.
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    /// The router for addresses outside the subnet, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Run EAL without hugepages (`--no-huge`: ordinary memory, for virtual devices and tests).
    pub no_huge: bool,
    /// Memory EAL reserves, MiB (`-m`).
    pub memory_mb: u32,
    /// `--iova-mode`: `"va"`, `"pa"`, or empty for EAL's choice.
    pub iova_mode: String,
    /// `--file-prefix`: unique per process on one machine (runtime files under
    /// `/var/run/dpdk/<prefix>`).
    pub file_prefix: String,
    /// More EAL arguments, passed as they are.
    pub eal_args: Vec<String>,
    /// Mbufs in each queue's pool (receive ring, transmit ring and frames in flight).
    pub mbufs_per_queue: u32,
    /// Receive and transmit descriptors per queue.
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// TCP connections one queue serves at once (smoltcp's linear socket scan: keep it in the
    /// hundreds); a SYN past it is refused with a RST.
    pub max_connections_per_queue: usize,
    /// Each connection's TCP receive and send buffers, bytes (the receive buffer is the
    /// advertised window).
    pub tcp_rx_buffer_bytes: usize,
    pub tcp_tx_buffer_bytes: usize,
}

impl DpdkConfig {
    /// A configuration for `port` at `ipv4/prefix_len` with the defaults: `--no-huge`, 256 MiB,
    /// IOVA as VA, 8191 mbufs and 1024 descriptors per queue, 512 connections per queue,
    /// 64 KiB TCP buffers.
    pub fn new(port: &str, ipv4: Ipv4Addr, prefix_len: u8) -> DpdkConfig {
        DpdkConfig {
            port: port.to_string(),
            ipv4,
            prefix_len,
            gateway: None,
            no_huge: true,
            memory_mb: 256,
            iova_mode: "va".into(),
            file_prefix: format!("bolide-{}", std::process::id()),
            eal_args: Vec::new(),
            mbufs_per_queue: 8191,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            max_connections_per_queue: 512,
            tcp_rx_buffer_bytes: 64 * 1024,
            tcp_tx_buffer_bytes: 64 * 1024,
        }
    }

    /// Whether the port names a virtual device (`net_*`) rather than a PCI address.
    pub fn is_vdev(&self) -> bool {
        self.port.starts_with("net_")
    }

    /// The device name DPDK knows the port by: the vdev name before its arguments, or the PCI
    /// address.
    pub fn device_name(&self) -> &str {
        self.port.split(',').next().unwrap_or(&self.port)
    }

    /// The EAL command line for this configuration (`argv[0]` included).
    pub fn eal_argv(&self) -> Vec<String> {
        let mut a = vec!["bolide".to_string(), "-l".into(), "0".into()];
        if self.no_huge {
            a.push("--no-huge".into());
        }
        a.push("-m".into());
        a.push(self.memory_mb.to_string());
        a.push(format!("--file-prefix={}", self.file_prefix));
        if !self.iova_mode.is_empty() {
            a.push(format!("--iova-mode={}", self.iova_mode));
        }
        if self.is_vdev() {
            a.push("--no-pci".into());
            a.push(format!("--vdev={}", self.port));
        } else {
            a.push("-a".into());
            a.push(self.port.clone());
        }
        a.push("--no-telemetry".into());
        a.push("--log-level=*:warning".into());
        a.extend(self.eal_args.iter().cloned());
        a
    }

    /// Checks the relations between the fields.
    ///
    /// # Errors
    /// Names the first field that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.port.is_empty() {
            return Err("port: empty".into());
        }
        if self.prefix_len == 0 || self.prefix_len > 32 {
            return Err(format!("prefix_len: {} is not 1..=32", self.prefix_len));
        }
        if self.memory_mb < 64 {
            return Err(format!("memory_mb: {} is under 64", self.memory_mb));
        }
        if !matches!(self.iova_mode.as_str(), "" | "va" | "pa") {
            return Err(format!("iova_mode: {:?} is not \"va\" or \"pa\"", self.iova_mode));
        }
        if self.file_prefix.is_empty() || self.file_prefix.contains('/') {
            return Err(format!("file_prefix: {:?} must be a non-empty name", self.file_prefix));
        }
        if self.mbufs_per_queue < 2 * (self.rx_descriptors as u32 + self.tx_descriptors as u32) {
            return Err(format!(
                "mbufs_per_queue: {} is under twice the descriptors ({} receive + {} transmit)",
                self.mbufs_per_queue, self.rx_descriptors, self.tx_descriptors
            ));
        }
        if self.max_connections_per_queue == 0 || self.max_connections_per_queue > 4096 {
            return Err(format!(
                "max_connections_per_queue: {} is not 1..=4096 (smoltcp scans every socket per segment)",
                self.max_connections_per_queue
            ));
        }
        if self.tcp_rx_buffer_bytes < 4096 || self.tcp_tx_buffer_bytes < 4096 {
            return Err("tcp buffers: at least 4096 bytes each".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_arguments_for_a_vdev_and_a_pci_port() {
        let mut c = DpdkConfig::new("net_af_packet0,iface=veth0", Ipv4Addr::new(10, 0, 0, 1), 24);
        c.file_prefix = "t1".into();
        assert!(c.is_vdev());
        assert_eq!(c.device_name(), "net_af_packet0");
        let a = c.eal_argv();
        assert!(a.contains(&"--no-huge".to_string()));
        assert!(a.contains(&"--vdev=net_af_packet0,iface=veth0".to_string()));
        assert!(a.contains(&"--file-prefix=t1".to_string()));
        assert!(a.contains(&"--no-pci".to_string()));
        c.port = "0000:03:00.0".into();
        c.no_huge = false;
        let a = c.eal_argv();
        assert!(!a.contains(&"--no-huge".to_string()));
        let i = a.iter().position(|x| x == "-a").expect("-a");
        assert_eq!(a[i + 1], "0000:03:00.0");
        assert_eq!(c.device_name(), "0000:03:00.0");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let base = DpdkConfig::new("net_tap0", Ipv4Addr::new(10, 0, 0, 1), 24);
        let mut c = base.clone();
        c.prefix_len = 33;
        assert!(c.validate().unwrap_err().starts_with("prefix_len"));
        let mut c = base.clone();
        c.iova_mode = "xx".into();
        assert!(c.validate().unwrap_err().starts_with("iova_mode"));
        let mut c = base.clone();
        c.mbufs_per_queue = 100;
        assert!(c.validate().unwrap_err().starts_with("mbufs_per_queue"));
        let mut c = base;
        c.max_connections_per_queue = 0;
        assert!(c.validate().unwrap_err().starts_with("max_connections"));
    }
}
