//! Hardware profiles (`hw-profiles/*.toml`): how Bolide is laid out on one machine — which
//! cores run workers, which devices hold the shards and through which driver, the storage
//! tuning, the NIC, and what the devices measured. `bolide serve --profile FILE` applies one;
//! `docs/HARDWARE.md` explains every field.
//!
//! Shards are given to devices round-robin (shard `w` on device `w % devices`). A device whose
//! `path` is a directory holds one file per shard (`shard-<w>.dat`, created sparse at
//! `shard_file_bytes`); a regular file or block device is split into equal regions, one per
//! shard on it.

use crate::config::{ConfigError, StorageConfig};
use std::path::PathBuf;

/// A parsed hardware profile. Every section but `[[device]]` is optional; unknown keys are
/// errors.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    /// Short name, e.g. `dev-uring`.
    pub name: String,
    /// What machine this is for, in a sentence.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub cpu: CpuSection,
    /// The devices, in shard-assignment order; at least one.
    #[serde(rename = "device")]
    pub devices: Vec<DeviceSection>,
    /// Storage tuning, as the config file's `[storage]` (wblock size, flush policy,
    /// `commit_to_device`, defrag settings ...).
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub network: NetworkSection,
}

/// `[cpu]`: where workers run.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuSection {
    /// Core ids to run one pinned worker each on; empty = every core of the machine.
    pub cores: Vec<usize>,
}

/// The driver a device is reached through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceDriver {
    /// io_uring over a file or block device (the kernel's NVMe driver).
    Uring,
    /// Bolide's user-space NVMe driver over VFIO (needs `pci_address`).
    Nvme,
}

/// `[[device]]`: one device.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSection {
    pub driver: DeviceDriver,
    /// For `uring`: a directory (one file per shard), a file, or a block device.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// For `nvme`: the controller's PCI address, `DDDD:BB:DD.F`.
    #[serde(default)]
    pub pci_address: Option<String>,
    /// For `nvme`: the namespace id (NSID) on that controller. Default 1.
    #[serde(default)]
    pub nsid: Option<u32>,
    /// For a directory: size of each shard file, bytes (created sparse). Default 2 GiB.
    #[serde(default = "default_shard_file_bytes")]
    pub shard_file_bytes: u64,
    /// Submission-queue entries per shard on this device, 1..=4096. Default 128.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// What `bolide probe` measured on this device, if it was probed.
    #[serde(default)]
    pub measured: Option<MeasuredDevice>,
}

fn default_shard_file_bytes() -> u64 {
    2 << 30
}

fn default_queue_depth() -> u32 {
    128
}

/// `[device.measured]`: device figures (Seastar `iotune` style), for capacity planning and to
/// compare a device with its datasheet.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeasuredDevice {
    /// Sequential read and write bandwidth, MB/s (10^6 bytes).
    pub seq_read_mbps: f64,
    pub seq_write_mbps: f64,
    /// Random 4 KiB read and write IOPS at the best queue depth probed.
    pub rand_read_iops: f64,
    pub rand_write_iops: f64,
    /// Queue-depth-1 4 KiB read and write latency, µs (median).
    pub qd1_read_latency_us: f64,
    pub qd1_write_latency_us: f64,
    /// When and how it was measured (free text: date, tool, command).
    pub measured_by: String,
}

/// The network driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NicDriver {
    /// Kernel sockets through the node's default backend (io_uring).
    #[default]
    Kernel,
    /// Kernel sockets through epoll.
    Epoll,
    /// Kernel sockets through io_uring (multishot accept, provided receive buffers, batched
    /// sends).
    #[serde(rename = "io_uring")]
    IoUring,
    /// A DPDK-polled port (needs `port`).
    Dpdk,
}

/// How a worker waits for work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PollingMode {
    /// Sleep in the poller until a socket, ring or device is ready (shares cores well).
    #[default]
    Interrupt,
    /// Spin without sleeping (lowest latency; owns its core).
    Busy,
}

/// `[network]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    pub driver: NicDriver,
    /// For `dpdk`: the port (PCI address or vdev name).
    pub port: Option<String>,
    pub polling: PollingMode,
}

fn err(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

/// Whether `s` is a PCI address `DDDD:BB:DD.F` (hex digits, function 0..=7).
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0..4, 5..7, 8..10]
            .iter()
            .all(|r| b[r.clone()].iter().all(u8::is_ascii_hexdigit))
        && (b'0'..=b'7').contains(&b[11])
}

impl HardwareProfile {
    /// Parses and validates a profile.
    ///
    /// # Errors
    /// TOML errors (with line and column) or the first invalid key and why.
    pub fn from_toml(text: &str) -> Result<HardwareProfile, String> {
        let p: HardwareProfile = toml::from_str(text).map_err(|e| e.to_string())?;
        p.validate().map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Checks every field and the relations between them.
    ///
    /// # Errors
    /// The first bad key, named as in the file (`device[1].pci_address`), with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(err("name", "must not be empty"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.cpu.cores {
            if !seen.insert(c) {
                return Err(err("cpu.cores", format!("core {c} is listed twice")));
            }
        }
        if self.devices.is_empty() {
            return Err(err("device", "at least one [[device]] is needed"));
        }
        for d in &self.devices {
            match d.driver {
                DeviceDriver::Uring => {
                    if d.path.is_none() {
                        return Err(err("device.path", "a uring device needs a path"));
                    }
                    if d.pci_address.is_some() {
                        return Err(err("device.pci_address", "only nvme devices have a PCI address"));
                    }
                    if d.nsid.is_some() {
                        return Err(err("device.nsid", "only nvme devices have a namespace id"));
                    }
                }
                DeviceDriver::Nvme => {
                    let Some(a) = &d.pci_address else {
                        return Err(err("device.pci_address", "an nvme device needs a PCI address"));
                    };
                    if !is_pci_address(a) {
                        return Err(err(
                            "device.pci_address",
                            format!("{a:?} is not a PCI address DDDD:BB:DD.F"),
                        ));
                    }
                    if d.path.is_some() {
                        return Err(err("device.path", "an nvme device is named by pci_address, not path"));
                    }
                    if d.nsid == Some(0) || d.nsid == Some(u32::MAX) {
                        return Err(err("device.nsid", "a namespace id is 1..=0xFFFFFFFE"));
                    }
                }
            }
            if !(1..=4096).contains(&d.queue_depth) {
                return Err(err(
                    "device.queue_depth",
                    format!("{} is outside 1..=4096", d.queue_depth),
                ));
            }
            if d.shard_file_bytes < 4 * u64::from(self.storage.wblock_size_bytes) {
                return Err(err(
                    "device.shard_file_bytes",
                    format!("{} holds fewer than 4 wblocks", d.shard_file_bytes),
                ));
            }
            if let Some(m) = &d.measured {
                let figures = [
                    m.seq_read_mbps,
                    m.seq_write_mbps,
                    m.rand_read_iops,
                    m.rand_write_iops,
                    m.qd1_read_latency_us,
                    m.qd1_write_latency_us,
                ];
                if figures.iter().any(|f| !f.is_finite() || *f < 0.0) {
                    return Err(err("device.measured", "figures must be finite and not negative"));
                }
            }
        }
        self.storage.validate().map_err(|e| ConfigError {
            key: e.key,
            reason: format!("[storage] {}", e.reason),
        })?;
        if self.network.driver == NicDriver::Dpdk && self.network.port.is_none() {
            return Err(err("network.port", "a dpdk NIC needs a port"));
        }
        Ok(())
    }

    /// Whether `bolide serve` can run this profile in this build: uring and (on Linux) nvme
    /// devices, kernel sockets.
    ///
    /// # Errors
    /// Names the first part this build cannot drive.
    pub fn check_supported(&self) -> Result<(), ConfigError> {
        if !cfg!(target_os = "linux") && self.devices.iter().any(|d| d.driver == DeviceDriver::Nvme) {
            return Err(err("device.driver", "nvme (VFIO) needs Linux; use uring"));
        }
        if self.network.driver == NicDriver::Dpdk {
            return Err(err("network.driver", "dpdk is not in this build yet; use kernel"));
        }
        Ok(())
    }

    /// How many workers the profile asks for; `None` = one per core of the machine.
    pub fn workers(&self) -> Option<usize> {
        (!self.cpu.cores.is_empty()).then_some(self.cpu.cores.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAB: &str = r#"
name = "lab"
[cpu]
cores = [2, 3, 4, 5]
[[device]]
driver = "nvme"
pci_address = "0000:01:00.0"
queue_depth = 256
[device.measured]
seq_read_mbps = 3200.0
rand_read_iops = 700000.0
measured_by = "bolide probe, 2026-11-21"
[[device]]
driver = "nvme"
pci_address = "0000:02:00.0"
[storage]
wblock_size_bytes = 1048576
commit_to_device = true
[network]
driver = "dpdk"
port = "0000:03:00.0"
polling = "busy"
"#;

    #[test]
    fn a_lab_profile_parses_and_is_refused_by_this_build() {
        let p = HardwareProfile::from_toml(LAB).unwrap();
        assert_eq!(p.devices.len(), 2);
        assert_eq!(p.workers(), Some(4));
        assert_eq!(p.devices[1].queue_depth, 128);
        assert!(p.storage.commit_to_device);
        assert_eq!(p.network.polling, PollingMode::Busy);
        assert_eq!(p.devices[0].measured.as_ref().unwrap().rand_read_iops, 700000.0);
        assert_eq!(p.check_supported().unwrap_err().key, "network.driver");
    }

    #[test]
    fn bad_profiles_name_their_key() {
        let cases = [
            (LAB.replace("0000:01:00.0", "01:00.0"), "device.pci_address"),
            (
                LAB.replace("pci_address = \"0000:02:00.0\"", "pci_address = \"0000:02:00.0\"\nnsid = 0"),
                "device.nsid",
            ),
            (LAB.replace("cores = [2, 3, 4, 5]", "cores = [2, 2]"), "cpu.cores"),
            (
                LAB.replace("queue_depth = 256", "queue_depth = 0"),
                "device.queue_depth",
            ),
            (LAB.replace("port = \"0000:03:00.0\"", ""), "network.port"),
            (
                LAB.replace("wblock_size_bytes = 1048576", "wblock_size_bytes = 1000"),
                "wblock_size_bytes",
            ),
            (
                LAB.replace("seq_read_mbps = 3200.0", "seq_read_mbps = -1.0"),
                "device.measured",
            ),
            (
                "name = \"x\"\n[[device]]\ndriver = \"uring\"\n".to_string(),
                "device.path",
            ),
        ];
        for (text, key) in cases {
            let p: HardwareProfile = toml::from_str(&text).unwrap();
            assert_eq!(p.validate().unwrap_err().key, key, "{text}");
        }
        let e = HardwareProfile::from_toml(&LAB.replace("polling", "poling")).unwrap_err();
        assert!(e.contains("poling"), "unknown keys are named: {e}");
    }

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:01:00.0"));
        assert!(is_pci_address("abcd:ef:1f.7"));
        assert!(!is_pci_address("0000:01:00.8"));
        assert!(!is_pci_address("0000-01:00.0"));
        assert!(!is_pci_address("0000:01:00.00"));
    }
}
