//! Record digests and partition ids (wire spec §4).
//!
//! `digest = RIPEMD-160(set_name ‖ key_particle_type ‖ key_bytes)`; the partition id is the first
//! two digest bytes read little-endian, masked to 12 bits.

/// Number of partitions in a namespace (spec §2.4, §4).
pub const N_PARTITIONS: usize = 4096;

/// A record's 20-byte RIPEMD-160 digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub [u8; 20]);

/// A partition id, `0..4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u16);

impl Digest {
    /// Digest of a key (spec §4): `set` is empty for a set-less key; `key_ptype` is the key's
    /// particle type (1 integer, 2 double, 3 string, 4 or another blob type); `key_bytes` its
    /// wire value (integers as 8-byte big-endian).
    pub fn compute(set: &[u8], key_ptype: u8, key_bytes: &[u8]) -> Digest {
        unimplemented!("{set:?}{key_ptype}{key_bytes:?}")
    }

    /// The partition this digest belongs to.
    pub fn partition_id(&self) -> PartitionId {
        PartitionId(u16::from_le_bytes([self.0[0], self.0[1]]) & (N_PARTITIONS as u16 - 1))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
