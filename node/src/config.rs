//! Storage configuration of one namespace's shards, with validation.
//!
//! Names follow Aerospike's storage-engine settings (`write-block-size`, `flush-max-ms`,
//! `commit-to-device`, `defrag-lwm-pct`, `min-avail-pct`, `max-record-size`,
//! `post-write-cache`, `max-write-cache`) spelled the Rust way with units last.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A bad setting: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    pub key: &'static str,
    pub reason: String,
}

/// Storage settings. `Default` gives the documented defaults. In TOML every key is optional
/// and an unknown key is an error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Write-block size, bytes: a power of two from 128 KiB to 8 MiB. Default 1 MiB.
    pub wblock_size_bytes: u32,
    /// A partially filled write buffer is flushed once its oldest unflushed write is this old,
    /// ms. Default 1000. Without `commit_to_device`, writes younger than this can be lost in a
    /// crash.
    pub flush_max_ms: u64,
    /// Acknowledge a write only once its bytes are on the device (group commit). Default false.
    pub commit_to_device: bool,
    /// A sealed wblock whose live bytes fall under this percentage of its size is defragmented.
    /// 1..=99, default 50.
    pub defrag_lwm_pct: u32,
    /// Client writes are refused (out of space) when fewer than this percentage of wblocks are
    /// free; the rest is kept for defrag. 1..=50, default 5 (at least 2 wblocks).
    pub min_avail_pct: u32,
    /// Largest record, bytes (header and bins). Default 1 MiB minus 64 bytes: a record must fit
    /// in one wblock after the wblock's 64-byte header.
    pub max_record_bytes: u32,
    /// Recently flushed wblocks kept in RAM to serve reads. Default 4.
    pub post_write_cache_wblocks: u32,
    /// Sealed wblocks allowed to wait for their device write; past it writes are refused as
    /// overloaded (Aerospike's device-overload). Default 8.
    pub max_write_cache_wblocks: u32,
    /// Device reads of single records in flight per shard. Default 256.
    pub max_pending_reads: u32,
    /// Wblocks read by defrag at once. Default 2.
    pub defrag_max_in_flight: u32,
    /// Period of the expiry sweep over the index, ms. Default 1000.
    pub nsup_period_ms: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            wblock_size_bytes: 1 << 20,
            flush_max_ms: 1000,
            commit_to_device: false,
            defrag_lwm_pct: 50,
            min_avail_pct: 5,
            max_record_bytes: (1 << 20) - crate::record::WBLOCK_HEADER_BYTES as u32,
            post_write_cache_wblocks: 4,
            max_write_cache_wblocks: 8,
            max_pending_reads: 256,
            defrag_max_in_flight: 2,
            nsup_period_ms: 1000,
        }
    }
}

fn err(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        reason: reason.into(),
    }
}

impl StorageConfig {
    /// Checks every setting and the relations between them.
    ///
    /// # Errors
    /// The first bad key, with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = self.wblock_size_bytes;
        if !w.is_power_of_two() || !(128 << 10..=8 << 20).contains(&w) {
            return Err(err(
                "wblock_size_bytes",
                format!("{w} is not a power of two from 131072 (128 KiB) to 8388608 (8 MiB)"),
            ));
        }
        if self.flush_max_ms == 0 || self.flush_max_ms > 60_000 {
            return Err(err(
                "flush_max_ms",
                format!("{} is outside 1..=60000", self.flush_max_ms),
            ));
        }
        if !(1..=99).contains(&self.defrag_lwm_pct) {
            return Err(err(
                "defrag_lwm_pct",
                format!("{} is outside 1..=99", self.defrag_lwm_pct),
            ));
        }
        if !(1..=50).contains(&self.min_avail_pct) {
            return Err(err(
                "min_avail_pct",
                format!("{} is outside 1..=50", self.min_avail_pct),
            ));
        }
        let max_rec = w as usize - crate::record::WBLOCK_HEADER_BYTES;
        if self.max_record_bytes < 128 || self.max_record_bytes as usize > max_rec {
            return Err(err(
                "max_record_bytes",
                format!(
                    "{} is outside 128..={max_rec} (wblock size minus its header)",
                    self.max_record_bytes
                ),
            ));
        }
        if self.max_record_bytes as usize > crate::index::MAX_RECORD_BYTES {
            return Err(err(
                "max_record_bytes",
                format!(
                    "{} is over the index limit {}",
                    self.max_record_bytes,
                    crate::index::MAX_RECORD_BYTES
                ),
            ));
        }
        if self.post_write_cache_wblocks > 1024 {
            return Err(err(
                "post_write_cache_wblocks",
                format!("{} is over 1024", self.post_write_cache_wblocks),
            ));
        }
        if !(1..=256).contains(&self.max_write_cache_wblocks) {
            return Err(err(
                "max_write_cache_wblocks",
                format!("{} is outside 1..=256", self.max_write_cache_wblocks),
            ));
        }
        if !(1..=65_536).contains(&self.max_pending_reads) {
            return Err(err(
                "max_pending_reads",
                format!("{} is outside 1..=65536", self.max_pending_reads),
            ));
        }
        if !(1..=16).contains(&self.defrag_max_in_flight) {
            return Err(err(
                "defrag_max_in_flight",
                format!("{} is outside 1..=16", self.defrag_max_in_flight),
            ));
        }
        if self.nsup_period_ms == 0 {
            return Err(err("nsup_period_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// Settings an operator may change while the node runs (Aerospike's `set-config`), with their
/// start-up values from the config file. Every worker reads them where they apply, so a change
/// takes effect on the next command or sweep without a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The namespace's `default-ttl`: TTL of a write that asks for the default (TTL 0), seconds;
    /// 0 = never expire. At most [`MAX_DEFAULT_TTL_S`].
    pub default_ttl_s: u32,
    /// The namespace's `nsup-period` (the expiry sweep's period; Aerospike sets it in seconds),
    /// ms. 0: no sweep, and, as Aerospike, writes with a TTL are refused (22) unless
    /// `allow_ttl_without_nsup`. Starts as [`StorageConfig::nsup_period_ms`].
    pub nsup_period_ms: u64,
    /// The namespace's `allow-ttl-without-nsup`.
    pub allow_ttl_without_nsup: bool,
    /// The namespace's `default-read-touch-ttl-pct`: a read that asks for the default (0)
    /// touches its record once the TTL left is within this share of the TTL it was written
    /// with; 0 = never. 0..=100.
    pub default_read_touch_ttl_pct: u32,
    /// The service's `proto-fd-idle-ms`: client connections idle this long are closed, ms;
    /// 0 = never.
    pub proto_fd_idle_ms: u64,
    /// The service's `query-max-done`: finished query jobs kept for `query-show`. Bolide keeps
    /// no finished jobs, so the value is only stored and reported (the clients' test harnesses
    /// set it).
    pub query_max_done: u32,
}

/// Longest `default-ttl`, seconds (10 years, as a client TTL).
pub const MAX_DEFAULT_TTL_S: u32 = 315_360_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_ttl_s: 0,
            nsup_period_ms: 1000,
            allow_ttl_without_nsup: false,
            default_read_touch_ttl_pct: 0,
            proto_fd_idle_ms: 0,
            query_max_done: 100,
        }
    }
}

/// [`Settings`] shared by every worker: atomics, read with relaxed loads on the data path.
#[derive(Debug)]
pub struct LiveSettings {
    pub default_ttl_s: AtomicU32,
    pub nsup_period_ms: AtomicU64,
    pub allow_ttl_without_nsup: AtomicBool,
    pub default_read_touch_ttl_pct: AtomicU32,
    pub proto_fd_idle_ms: AtomicU64,
    pub query_max_done: AtomicU32,
}

impl LiveSettings {
    pub fn new(s: Settings) -> LiveSettings {
        LiveSettings {
            default_ttl_s: AtomicU32::new(s.default_ttl_s),
            nsup_period_ms: AtomicU64::new(s.nsup_period_ms),
            allow_ttl_without_nsup: AtomicBool::new(s.allow_ttl_without_nsup),
            default_read_touch_ttl_pct: AtomicU32::new(s.default_read_touch_ttl_pct),
            proto_fd_idle_ms: AtomicU64::new(s.proto_fd_idle_ms),
            query_max_done: AtomicU32::new(s.query_max_done),
        }
    }

    /// The current values.
    pub fn get(&self) -> Settings {
        Settings {
            default_ttl_s: self.default_ttl_s.load(Ordering::Relaxed),
            nsup_period_ms: self.nsup_period_ms.load(Ordering::Relaxed),
            allow_ttl_without_nsup: self.allow_ttl_without_nsup.load(Ordering::Relaxed),
            default_read_touch_ttl_pct: self.default_read_touch_ttl_pct.load(Ordering::Relaxed),
            proto_fd_idle_ms: self.proto_fd_idle_ms.load(Ordering::Relaxed),
            query_max_done: self.query_max_done.load(Ordering::Relaxed),
        }
    }

    /// Whether a write with a TTL (not "never") is allowed: Aerospike's `is_ttl_disallowed`
    /// refuses it (22) while `nsup-period` is 0, unless `allow-ttl-without-nsup`.
    pub fn ttl_allowed(&self) -> bool {
        self.nsup_period_ms.load(Ordering::Relaxed) != 0 || self.allow_ttl_without_nsup.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StorageConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(StorageConfig, &str)> = vec![
            (
                StorageConfig {
                    wblock_size_bytes: 3 << 20,
                    ..Default::default()
                },
                "wblock_size_bytes",
            ),
            (
                StorageConfig {
                    wblock_size_bytes: 64 << 10,
                    ..Default::default()
                },
                "wblock_size_bytes",
            ),
            (
                StorageConfig {
                    defrag_lwm_pct: 0,
                    ..Default::default()
                },
                "defrag_lwm_pct",
            ),
            (
                StorageConfig {
                    min_avail_pct: 80,
                    ..Default::default()
                },
                "min_avail_pct",
            ),
            (
                StorageConfig {
                    wblock_size_bytes: 128 << 10,
                    ..Default::default()
                },
                "max_record_bytes",
            ),
            (
                StorageConfig {
                    flush_max_ms: 0,
                    ..Default::default()
                },
                "flush_max_ms",
            ),
        ];
        for (cfg, key) in cases {
            assert_eq!(cfg.validate().unwrap_err().key, key, "{cfg:?}");
        }
    }
}
