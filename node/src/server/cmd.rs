//! The per-command state machine on a partition's owner: every single-record command (a
//! client's, a batch row, one forwarded by another worker) lives in a [`Slab`] entry from the
//! moment it reaches its owner until it is answered, in one explicit [`Stage`]:
//!
//! ```text
//!   arrive ──► Queued (another command of the digest runs) ──┐
//!     │                                                       │ (its turn)
//!     └───────────────────────────────────────────────────────┴─► run
//!   run ──► answer                         (no device I/O needed)
//!       └─► Reading ──read done──► run ... (the record's bins come from the device)
//!       └─► Writing { waits } ──ack──► answer   (commit_to_device, the replica's copy)
//! ```
//!
//! Commands on one digest run one at a time ([`DigestQueue`]), so a read-modify-write that waits
//! for the device never interleaves with another write of the same record.
//!
//! Device I/O and replica acknowledgements find their command again by a [`Token`]: the slab
//! key and a kind tag, so each completion goes to the one table that can own it.

use super::exec::{Command, Reply};
use super::msg::Origin;
use crate::digest::Digest;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

/// A slab key: index and the slot's generation, so a key that outlived its entry finds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key(u64);

impl Key {
    fn new(index: u32, generation: u32) -> Key {
        Key((u64::from(generation) << 32) | u64::from(index))
    }
    fn index(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The key as one integer (device tokens carry it).
    pub fn raw(self) -> u64 {
        self.0
    }
    pub fn from_raw(v: u64) -> Key {
        Key(v)
    }
}

/// A table of entries addressed by [`Key`]; freed slots are reused with a new generation. No
/// allocation once it has grown to the number of entries alive at once.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, v: T) -> Key {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i as usize];
                s.0 = s.0.wrapping_add(1);
                s.1 = Some(v);
                Key::new(i, s.0)
            }
            None => {
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 entries");
                self.slots.push((0, Some(v)));
                Key::new(i, 0)
            }
        }
    }

    pub fn get(&self, k: Key) -> Option<&T> {
        match self.slots.get(k.index()) {
            Some((g, Some(v))) if *g == k.generation() => Some(v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, k: Key) -> Option<&mut T> {
        match self.slots.get_mut(k.index()) {
            Some((g, Some(v))) if *g == k.generation() => Some(v),
            _ => None,
        }
    }

    pub fn remove(&mut self, k: Key) -> Option<T> {
        let s = self.slots.get_mut(k.index())?;
        if s.0 != k.generation() {
            return None;
        }
        let v = s.1.take()?;
        self.len -= 1;
        self.free.push(k.index() as u32);
        Some(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a device completion or replica acknowledgement belongs to (the top 4 bits of a token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A command's read or write ([`Cmds`]).
    Cmd = 1,
    /// A scan part's record read.
    Scan = 2,
    /// A replica copy waiting for its device write (commit_to_device).
    ReplicaWrite = 3,
    /// A re-replication record read.
    RepairRead = 4,
    /// A read served from the replica copy for another worker's client.
    ReplicaRead = 5,
}

/// A device or replication token: a kind and a slab key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token(pub u64);

const KIND_SHIFT: u32 = 60;

impl Token {
    pub fn new(kind: TokenKind, key: Key) -> Token {
        assert!(key.raw() >> KIND_SHIFT == 0, "slab key too large for a token");
        Token(((kind as u64) << KIND_SHIFT) | key.raw())
    }
    /// The token's kind, or `None` for a token this module never made.
    pub fn kind(self) -> Option<TokenKind> {
        Some(match self.0 >> KIND_SHIFT {
            1 => TokenKind::Cmd,
            2 => TokenKind::Scan,
            3 => TokenKind::ReplicaWrite,
            4 => TokenKind::RepairRead,
            5 => TokenKind::ReplicaRead,
            _ => return None,
        })
    }
    pub fn key(self) -> Key {
        Key(self.0 & ((1 << KIND_SHIFT) - 1))
    }
}

/// Where a command is in its life.
#[derive(Debug)]
pub enum Stage {
    /// Behind another command of the same digest.
    Queued,
    /// The shard is reading the record from the device.
    Reading,
    /// Stored; waiting for `waits` acknowledgements (the local device write with
    /// commit_to_device, the replica's copy); then answer `reply`, or `code` if one failed.
    Writing { reply: Reply, waits: u8, code: u8 },
}

/// A command on its owner.
#[derive(Debug)]
pub struct Pending {
    pub origin: Origin,
    pub cmd: Box<Command>,
    pub stage: Stage,
}

/// A hasher for digests, which are already uniformly random: their first 8 bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Digest hashes as its 20-byte array (a length prefix first, then the bytes).
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 ^= u64::from_le_bytes(b);
            self.0 = self.0.rotate_left(5);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

pub type DigestMap<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// Per-digest serialization: the digests with a command running, and the commands waiting.
#[derive(Default)]
pub struct DigestQueue {
    busy: DigestMap<VecDeque<Key>>,
}

impl DigestQueue {
    /// Marks `digest` busy for `k`, or queues `k` behind the command running on it. Returns
    /// whether `k` may run now.
    pub fn enter(&mut self, digest: Digest, k: Key) -> bool {
        match self.busy.get_mut(&digest) {
            Some(q) => {
                q.push_back(k);
                false
            }
            None => {
                self.busy.insert(digest, VecDeque::new());
                true
            }
        }
    }

    /// The command on `digest` finished: the next one waiting, if any (the digest stays busy
    /// for it), else the digest is free.
    pub fn leave(&mut self, digest: &Digest) -> Option<Key> {
        let q = self.busy.get_mut(digest)?;
        match q.pop_front() {
            Some(k) => Some(k),
            None => {
                self.busy.remove(digest);
                None
            }
        }
    }

    /// Digests with a command running.
    pub fn busy(&self) -> usize {
        self.busy.len()
    }
}

/// The owner side's commands: the slab and the digest queue.
#[derive(Default)]
pub struct Cmds {
    pub slab: Slab<Pending>,
    pub digests: DigestQueue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_reuses_slots_with_a_new_generation() {
        let mut s = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        let c = s.insert("c");
        assert_eq!(c.index(), a.index());
        assert_ne!(c, a);
        assert_eq!(s.get(a), None, "a stale key finds nothing");
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.get(c), Some(&"c"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn tokens_keep_kind_and_key() {
        let mut s: Slab<u8> = Slab::default();
        for _ in 0..5 {
            let k = s.insert(1);
            s.remove(k);
        }
        let k = s.insert(7);
        for kind in [
            TokenKind::Cmd,
            TokenKind::Scan,
            TokenKind::ReplicaWrite,
            TokenKind::RepairRead,
            TokenKind::ReplicaRead,
        ] {
            let t = Token::new(kind, k);
            assert_eq!(t.kind(), Some(kind));
            assert_eq!(t.key(), k);
        }
        assert_eq!(Token(0).kind(), None);
    }

    #[test]
    fn digest_queue_runs_one_command_per_digest_in_arrival_order() {
        let mut q = DigestQueue::default();
        let (d1, d2) = (Digest([1; 20]), Digest([2; 20]));
        let mut s: Slab<()> = Slab::default();
        let (k1, k2, k3, k4) = (s.insert(()), s.insert(()), s.insert(()), s.insert(()));
        assert!(q.enter(d1, k1));
        assert!(!q.enter(d1, k2), "second command on a busy digest waits");
        assert!(q.enter(d2, k3), "another digest runs at once");
        assert!(!q.enter(d1, k4));
        assert_eq!(q.busy(), 2);
        assert_eq!(q.leave(&d1), Some(k2));
        assert_eq!(q.leave(&d1), Some(k4));
        assert_eq!(q.leave(&d1), None);
        assert_eq!(q.leave(&d2), None);
        assert_eq!(q.busy(), 0);
        assert_eq!(q.leave(&d1), None, "leaving a free digest is harmless");
    }
}
