//! Defrag: move the live records out of sparse wblocks and free them.
//!
//! A sealed wblock whose live bytes fell under `defrag_lwm_pct` of its size is read whole; every
//! record the index still points at is appended, as raw bytes, to the defrag write buffer (only
//! the header's wblock sequence and header checksum change, so a damaged body stays detectable);
//! tombstones and expired records are dropped when the tombstone rule allows, else rewritten as
//! small tombstones. Once the defrag buffer's device write covering the moved bytes completes,
//! the wblock's header sector is zeroed and the wblock joins the free list.

use super::{tag, BlockState, Shard, Stream, TAG_DEFRAG};
use crate::clock::Clock;
use crate::index::IndexEntry;
use crate::record::{
    self, Record, RecordError, RecordHeader, WblockHeader, FLAG_TOMBSTONE, RBLOCK_BYTES, RECORD_HEADER_BYTES,
    WBLOCK_HEADER_BYTES,
};
use bolide_drivers::{BlockDevice, Completion, SubmitError};

/// Rewrites the wblock sequence stamp of the record at the start of `rec` and its header CRC
/// (record header offsets 44 and 4, see [`crate::record`]).
pub(crate) fn restamp(rec: &mut [u8], wblock_seq: u64) {
    rec[44..48].copy_from_slice(&(wblock_seq as u32).to_le_bytes());
    let crc = crc32c::crc32c(&rec[8..RECORD_HEADER_BYTES]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// Defrag could not finish a wblock.
enum Abort {
    NoSpace,
}

impl<D: BlockDevice, C: Clock> Shard<D, C> {
    pub(super) fn start_defrag(&mut self) {
        while self.defrag_in_flight < self.cfg.defrag_max_in_flight && self.failed.is_none() {
            // Each wblock in flight may need up to one wblock of room to move its live records.
            if self.free.len() as u32 <= self.defrag_in_flight {
                return;
            }
            let Some(b) = self.defrag_queue.pop_front() else { return };
            let info = &mut self.blocks[b as usize];
            if info.state != BlockState::Sealed {
                info.queued = false;
                continue;
            }
            let Some(buf) = self.pool.take() else {
                self.defrag_queue.push_front(b);
                return;
            };
            let offset = self.region.offset_bytes + b as u64 * self.wblock_size as u64;
            match self.dev.submit_read(offset, buf, tag(TAG_DEFRAG, b as u64)) {
                Ok(()) => {
                    self.blocks[b as usize].state = BlockState::Defrag;
                    self.defrag_in_flight += 1;
                }
                Err(SubmitError::Failed(e, buf)) => {
                    if let Some(buf) = buf {
                        self.pool.put(buf);
                    }
                    self.defrag_queue.push_front(b);
                    self.fail(e);
                    return;
                }
                Err(e) => {
                    if let Some(buf) = e.into_buf() {
                        self.pool.put(buf);
                    }
                    self.defrag_queue.push_front(b);
                    return;
                }
            }
        }
    }

    pub(super) fn on_defrag_read(&mut self, b: u32, c: Completion) {
        self.defrag_in_flight -= 1;
        let buf = c.buf.expect("defrag read carries its buffer");
        if let Err(e) = c.result {
            tracing::error!(
                shard = self.shard_id,
                wblock = b,
                "defrag read failed, wblock kept: {e}"
            );
            self.pin(b);
            self.pool.put(buf);
            return;
        }
        self.defrag_wblock(b, buf.as_slice());
        self.pool.put(buf);
    }

    fn pin(&mut self, b: u32) {
        let info = &mut self.blocks[b as usize];
        info.state = BlockState::Pinned;
        info.queued = false;
        self.stats.wblocks_pinned += 1;
    }

    fn defrag_wblock(&mut self, b: u32, data: &[u8]) {
        let ws = self.wblock_size;
        let seq = self.blocks[b as usize].seq;
        match WblockHeader::decode(&data[..WBLOCK_HEADER_BYTES]) {
            Ok(Some(h)) if h.seq == seq && h.wblock_id == b && h.instance_id == self.instance_id => {}
            other => {
                tracing::error!(
                    shard = self.shard_id,
                    wblock = b,
                    "defrag found a bad wblock header ({other:?}); wblock kept"
                );
                self.pin(b);
                return;
            }
        }
        let now_s = self.clock.now_cl_s();
        let mut deps: Vec<(u32, usize)> = Vec::new();
        let mut pos = WBLOCK_HEADER_BYTES;
        while pos + RECORD_HEADER_BYTES <= ws {
            match record::decode_header(&data[pos..], Some(seq)) {
                Ok(h) if pos + h.padded_len() <= ws => {
                    if let Err(Abort::NoSpace) =
                        self.defrag_record(b, pos, &h, &data[pos..pos + h.padded_len()], &mut deps, now_s)
                    {
                        // Try again later; what moved so far stays moved.
                        tracing::warn!(shard = self.shard_id, wblock = b, "defrag paused: no free wblock");
                        let info = &mut self.blocks[b as usize];
                        info.state = BlockState::Sealed;
                        info.queued = true;
                        self.defrag_queue.push_back(b);
                        return;
                    }
                    pos += h.padded_len();
                }
                Err(RecordError::HeaderCorrupt) | Ok(_) => {
                    self.stats.defrag_corrupt_headers += 1;
                    pos += RBLOCK_BYTES;
                }
                Err(_) => pos += RBLOCK_BYTES,
            }
        }
        self.stats.wblocks_defragged += 1;
        let info = &self.blocks[b as usize];
        if info.live_bytes != 0 {
            tracing::error!(
                shard = self.shard_id,
                wblock = b,
                live_bytes = info.live_bytes,
                "defrag could not find every live record (damaged headers); wblock kept"
            );
            self.pin(b);
            return;
        }
        // Records of this wblock that were superseded by writes still in a write buffer must
        // outlive those writes: wait until everything appended so far is durable.
        for r in &self.ram {
            if r.durable_used < r.used {
                note_dep(&mut deps, r.id, r.used);
            }
        }
        let info = &mut self.blocks[b as usize];
        info.state = BlockState::PendingFree;
        info.queued = false;
        info.free_deps = deps.len() as u32;
        if deps.is_empty() {
            self.start_erase(b);
            return;
        }
        for (id, upto) in deps {
            let ram = self.ram_mut(id).expect("defrag buffer is in RAM");
            ram.waiters.push_back(super::Waiter {
                upto,
                kind: super::WaitKind::Free(b),
            });
        }
    }

    /// Moves, rewrites or drops one record of wblock `b` found at `pos`.
    fn defrag_record(
        &mut self,
        b: u32,
        pos: usize,
        h: &RecordHeader,
        bytes: &[u8],
        deps: &mut Vec<(u32, usize)>,
        now_s: u32,
    ) -> Result<(), Abort> {
        let addr = self.addr_of(b, pos);
        let Some(mut e) = self.index.get(&h.meta.digest).copied() else {
            return Ok(());
        };
        if e.addr_bytes() != addr {
            return Ok(()); // a newer copy lives elsewhere
        }
        if !e.is_tombstone() && super::is_expired(&e, now_s) {
            self.sub_live(&e);
            e.set_tombstone();
            self.index.insert(e);
            self.stats.expired += 1;
        }
        if e.is_tombstone() {
            if self.tombstone_droppable(h.meta.origin_seq, b) {
                self.index.remove(&h.meta.digest);
                self.stats.tombstones_dropped += 1;
                return Ok(());
            }
            let (new_addr, size) = if h.flags & FLAG_TOMBSTONE != 0 {
                self.copy_raw(bytes, deps)?
            } else {
                // An expired record: keep only a tombstone of it.
                let tomb = Record {
                    meta: crate::record::RecordMeta {
                        tombstone: true,
                        ..h.meta
                    },
                    set_name: Vec::new(),
                    key: None,
                    bins: Vec::new(),
                };
                let size = record::padded(record::encoded_len(&tomb));
                let (id, off) = self
                    .reserve_append(Stream::Defrag, size, false)
                    .map_err(|_| Abort::NoSpace)?;
                let ram = self.ram_mut(id).expect("defrag buffer is in RAM");
                record::encode(&tomb, ram.seq, &mut ram.data[off..off + size]);
                note_dep(deps, id, off + size);
                (self.addr_of(id, off), size)
            };
            let moved = IndexEntry::new(
                e.digest(),
                new_addr,
                size,
                e.generation(),
                e.void_time(),
                e.lut_ms(),
                true,
            );
            self.index.insert(moved);
            self.stats.tombstones_rewritten += 1;
            self.stats.defrag_bytes += size as u64;
            return Ok(());
        }
        let (new_addr, size) = self.copy_raw(bytes, deps)?;
        let mut moved = e;
        moved.set_location(new_addr, size);
        self.replace_entry(moved, Some(e));
        self.stats.defrag_bytes += size as u64;
        Ok(())
    }

    fn copy_raw(&mut self, bytes: &[u8], deps: &mut Vec<(u32, usize)>) -> Result<(u64, usize), Abort> {
        let size = bytes.len();
        let (id, off) = self
            .reserve_append(Stream::Defrag, size, false)
            .map_err(|_| Abort::NoSpace)?;
        let ram = self.ram_mut(id).expect("defrag buffer is in RAM");
        let seq = ram.seq;
        ram.data[off..off + size].copy_from_slice(bytes);
        restamp(&mut ram.data[off..off + size], seq);
        note_dep(deps, id, off + size);
        Ok((self.addr_of(id, off), size))
    }

    /// True when no wblock other than `b` that may still be read by a cold start could hold a
    /// copy of the record older than a tombstone whose origin sequence is `origin_seq`.
    fn tombstone_droppable(&self, origin_seq: u64, b: u32) -> bool {
        match self.nonfree_seqs.iter().find(|(_, id)| *id != b) {
            Some((seq, _)) => *seq > origin_seq,
            None => true,
        }
    }
}

fn note_dep(deps: &mut Vec<(u32, usize)>, id: u32, upto: usize) {
    match deps.iter_mut().find(|(i, _)| *i == id) {
        Some(d) => d.1 = upto,
        None => deps.push((id, upto)),
    }
}
