//! Storage configuration of one namespace's shards, with validation.
//!
//! Names follow Aerospike's storage-engine settings (`write-block-size`, `flush-max-ms`,
//! `commit-to-device`, `defrag-lwm-pct`, `min-avail-pct`, `max-record-size`,
//! `post-write-cache`, `max-write-cache`) spelled the Rust way with units last.

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
