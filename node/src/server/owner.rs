//! The owner side of single-record commands: a command reaches the worker that owns its
//! partition, enters the per-digest queue ([`super::cmd`]), reads the record when the command
//! needs its bins, asks [`super::exec`] what to do, stores, waits for the acknowledgements
//! (commit_to_device, the replica's copy) and answers. Every step is a transition of the
//! command's [`Stage`] in the slab.

use super::cmd::{Key, Pending, Stage, Token, TokenKind};
use super::codec;
use super::exec::{self, Action, Command, Existing, Reply};
use super::msg::{CoreMsg, Origin, ReplMsg};
use super::reactor::Core;
use crate::clock::Clock;
use crate::proto;
use crate::record::{Record, RecordMeta};
use crate::shard::{ReadAck, ReadError, WriteError};
use bolide_drivers::net::Doorbell;
use bolide_drivers::BlockDevice;
use std::sync::Arc;

impl<D: BlockDevice, C: Clock, B: Doorbell> Core<D, C, B> {
    /// A command for this worker's shard arrived (from a connection here or a ring).
    pub(crate) fn start(&mut self, origin: Origin, cmd: Box<Command>) {
        self.refresh_truncate();
        let owner = self.owner(&cmd.digest);
        if owner != self.id {
            // The partition moved (failover) after the sender routed it: pass it on.
            self.dispatch(owner, origin, cmd);
            return;
        }
        let digest = cmd.digest;
        let key = self.cmds.slab.insert(Pending {
            origin,
            cmd,
            stage: Stage::Queued,
        });
        if self.cmds.digests.enter(digest, key) {
            self.run_cmd(key);
        }
    }

    fn pending(&self, key: Key) -> &Pending {
        self.cmds.slab.get(key).expect("a command key names a live command")
    }

    fn set_stage(&mut self, key: Key, stage: Stage) {
        self.cmds.slab.get_mut(key).expect("live command").stage = stage;
    }

    /// The command's turn on its digest: read the record if its bins are needed, else decide.
    fn run_cmd(&mut self, key: Key) {
        let digest = self.pending(key).cmd.digest;
        let mut entry = self.shard.peek(&digest);
        if let Some(e) = entry {
            if self.truncate.covers_namespace(e.lut_ms()) {
                self.shard.truncate_record(&digest, self.truncate.namespace_lut_ms());
                entry = None;
            }
        }
        // A record older than a set's cut-off: only the stored record says which set it is in.
        let must_read = entry.is_some_and(|e| self.truncate.may_cover(e.lut_ms()));
        // A read that will touch its record rewrites it, so it needs the bins too.
        let must_read = must_read || entry.is_some_and(|e| self.read_touch(&self.pending(key).cmd, &e).is_some());
        if let (true, Some(e)) = (self.pending(key).cmd.needs_bins() || must_read, entry) {
            if let Some(rec) = self.cache.get(&digest, &e) {
                self.cont(key, Some(rec), entry);
                return;
            }
            let token = Token::new(TokenKind::Cmd, key).0;
            match self.shard.get_entry(e, token) {
                Ok(ReadAck::Done(rec)) => self.cont(key, Some(Arc::new(rec)), entry),
                Ok(ReadAck::Pending) => self.set_stage(key, Stage::Reading),
                Err(ReadError::NotFound) => self.cont(key, None, None),
                Err(e) => self.read_failed(key, &e),
            }
        } else {
            self.cont(key, None, entry);
        }
    }

    /// The device read of command `key` completed.
    pub(crate) fn cmd_read_done(&mut self, key: Key, result: Result<Record, ReadError>) {
        match self.cmds.slab.get(key).map(|p| &p.stage) {
            Some(Stage::Reading) => {}
            other => panic!("a read completed for a command that is not reading: {other:?}"),
        }
        match result {
            Ok(rec) => {
                let rec = Arc::new(rec);
                // The entry now (the command holds its digest, so only defrag, expiry or a
                // truncate can have changed it while the device read).
                let entry = self.shard.peek(&rec.meta.digest);
                if let Some(e) = entry.filter(|e| e.lut_ms() == rec.meta.lut_ms) {
                    self.cache.insert(&e, &rec);
                }
                self.cont(key, Some(rec), entry);
            }
            Err(ReadError::NotFound) => self.cont(key, None, None),
            Err(e) => self.read_failed(key, &e),
        }
    }

    /// Decides and acts, with the record as stored (`rec`: its bins when read, shared with the
    /// record cache).
    /// `entry` is the record's live index entry as the caller last looked it up.
    fn cont(&mut self, key: Key, rec: Option<Arc<Record>>, mut entry: Option<crate::index::IndexEntry>) {
        let digest = self.pending(key).cmd.digest;
        let rec = match rec {
            Some(r) if self.truncate.covers(r.meta.lut_ms, &r.set_name) => {
                let cutoff = self
                    .truncate
                    .namespace_lut_ms()
                    .max(self.truncate.set_cutoff_ms(&r.set_name));
                self.shard.truncate_record(&digest, cutoff);
                entry = self.shard.peek(&digest);
                None
            }
            other => other,
        };
        let action = self.decide(&self.pending(key).cmd, rec.as_ref(), entry);
        if !matches!(action, Action::Reply(_)) {
            self.cache.forget(&digest);
        }
        let replica = self.shared.pmap.get(digest.partition_id()).replica();
        let token = Token::new(TokenKind::Cmd, key).0;
        match action {
            Action::Reply(r) => match (rec, entry) {
                (Some(rec), Some(e)) if r.result_code == 0 => match self.read_touch(&self.pending(key).cmd, &e) {
                    Some(void_time) => self.touch_on_read(key, rec, void_time, r),
                    None => self.finish(key, r),
                },
                _ => self.finish(key, r),
            },
            Action::Put(p, reply) => {
                // The replica's copy: the same record, with the generation and LUT the local
                // write gives it (filled in by after_write).
                let copy = replica.map(|r| {
                    let rec = Record {
                        meta: RecordMeta {
                            digest: p.digest,
                            generation: 0,
                            void_time: p.void_time,
                            lut_ms: 0,
                            origin_seq: 0,
                            tombstone: false,
                        },
                        set_name: p.set_name.clone(),
                        key: p.key.clone(),
                        bins: p.bins.clone(),
                    };
                    (r, Box::new(rec))
                });
                // Write-through: the record as written stays in the record cache, so the next
                // read or update of it (an update reads the old bins) costs no device read.
                let written = self.shard.put_kept(p, token).map(|(w, rec)| {
                    if let Some(e) = self.shard.peek(&digest).filter(|e| e.lut_ms() == rec.meta.lut_ms) {
                        self.cache.insert(&e, &Arc::new(rec));
                    }
                    w
                });
                self.after_write(key, written, reply, true, copy);
            }
            Action::Delete(reply) => {
                let written = self.shard.delete(&digest, token);
                let copy = replica.map(|r| {
                    let rec = Record {
                        meta: RecordMeta {
                            digest,
                            generation: 0,
                            void_time: 0,
                            lut_ms: 0,
                            origin_seq: 0,
                            tombstone: true,
                        },
                        set_name: Vec::new(),
                        key: None,
                        bins: Vec::new(),
                    };
                    (r, Box::new(rec))
                });
                self.after_write(key, written, reply, false, copy);
            }
        }
    }

    /// The void-time a read-only command gives its record by touching it, when it must
    /// (Aerospike's read-touch, `as_read_touch_check`): the command's `record_ttl` carries the
    /// read's `read_touch_ttl_percent` (0: the namespace's `default-read-touch-ttl-pct`,
    /// 0xFFFFFFFF: never; over 100 exec answers 4). Once the TTL left is within that share of
    /// the TTL the record was last written with, the record is rewritten with that TTL again
    /// from now (80 % of a 10 h TTL: reads from 2 h after the write on touch).
    /// `None`: no touch (no TTL, not due, or the record was written since).
    pub(crate) fn read_touch(&self, cmd: &Command, e: &crate::index::IndexEntry) -> Option<u32> {
        if cmd.is_write() || cmd.is_delete() || e.void_time() == 0 {
            return None;
        }
        let pct = match cmd.record_ttl {
            0 => self
                .shared
                .settings
                .default_read_touch_ttl_pct
                .load(std::sync::atomic::Ordering::Relaxed),
            p if p <= 100 => p,
            _ => return None,
        };
        if pct == 0 {
            return None;
        }
        let void_time = e.void_time();
        let write_ttl = void_time.saturating_sub(u32::try_from(e.lut_ms() / 1000).unwrap_or(u32::MAX));
        let threshold = u32::try_from(u64::from(write_ttl) * u64::from(pct) / 100).expect("at most write_ttl");
        let now_s = self.shard.clock().now_cl_s();
        if now_s < void_time - threshold {
            return None;
        }
        let touched = now_s.saturating_add(write_ttl);
        (touched > void_time).then_some(touched)
    }

    /// Touches the record a read just read (`reply`, answered once the touch is stored; the
    /// reply keeps the void-time the read saw, as the server's, which touches after
    /// answering). A touch that cannot be written leaves the record as it was and the read
    /// still answers.
    fn touch_on_read(&mut self, key: Key, rec: Arc<Record>, void_time: u32, reply: Reply) {
        self.cache.forget(&rec.meta.digest);
        let rec = Arc::unwrap_or_clone(rec);
        let replica = self.shared.pmap.get(rec.meta.digest.partition_id()).replica();
        let copy = replica.map(|r| {
            let mut c = rec.clone();
            c.meta.void_time = void_time;
            (r, Box::new(c))
        });
        let token = Token::new(TokenKind::Cmd, key).0;
        match self.shard.put_touched(rec, void_time, token) {
            Ok(w) => self.after_write(key, Ok(w), reply, false, copy),
            Err(e) => {
                tracing::debug!(worker = self.id, error = %e, "read touch not written");
                self.finish(key, reply);
            }
        }
    }

    /// Answers a put or delete now, or parks it until its acknowledgements: the local device
    /// write (commit_to_device) and the replica's copy (`copy`: the replica worker and the
    /// record, sent once the local write gave it its generation and LUT). A put answers the
    /// record's new generation; a delete answers 0 (spec §6.4).
    fn after_write(
        &mut self,
        key: Key,
        written: Result<crate::shard::Written, WriteError>,
        mut reply: Reply,
        is_put: bool,
        copy: Option<(usize, Box<Record>)>,
    ) {
        match written {
            Ok(w) => {
                if is_put {
                    reply.generation = w.generation as u32;
                }
                let mut waits = u8::from(w.pending);
                if let Some((r, mut rec)) = copy {
                    rec.meta.generation = w.generation;
                    rec.meta.lut_ms = w.lut_ms;
                    self.send(
                        r,
                        CoreMsg::Repl(ReplMsg::Replicate {
                            from: self.id,
                            token: key.raw(),
                            rec,
                        }),
                    );
                    waits += 1;
                }
                if waits > 0 {
                    self.set_stage(key, Stage::Writing { reply, waits, code: 0 });
                } else {
                    self.finish(key, reply);
                }
            }
            Err(e) => self.finish(key, Reply::code(write_error_code(&e))),
        }
    }

    /// One acknowledgement of the write of command `key` arrived (`code` 0 = success);
    /// answers the client once the last one is in. An acknowledgement for a command that is
    /// gone is a stale replica answer after failover and is ignored.
    pub(crate) fn write_acked(&mut self, key: Key, code: u8) {
        let Some(p) = self.cmds.slab.get_mut(key) else { return };
        let Stage::Writing {
            waits, code: first, ..
        } = &mut p.stage
        else {
            panic!("a write acknowledgement for a command that is not writing: {:?}", p.stage);
        };
        if code != 0 && *first == 0 {
            *first = code;
        }
        *waits -= 1;
        if *waits > 0 {
            return;
        }
        let Stage::Writing { reply, code, .. } = std::mem::replace(&mut p.stage, Stage::Queued) else {
            unreachable!("checked above")
        };
        let reply = if code == 0 { reply } else { Reply::code(code) };
        self.finish(key, reply);
    }

    /// What `cmd` does to the record as stored here (`rec`: its bins when read, `None` when
    /// there is none or they were not needed; `entry`: its live index entry), with the
    /// command's filter applied.
    pub(crate) fn decide(&self, cmd: &Command, rec: Option<&Arc<Record>>, entry: Option<crate::index::IndexEntry>) -> Action {
        let cur = Existing {
            record: rec,
            generation: entry.map_or(0, |e| e.generation()),
            void_time: entry.map_or(0, |e| e.void_time()),
        };
        let settings = &self.shared.settings;
        // One clock read per command (each costs a vDSO call and a 128-bit division).
        let now_cl_ms = self.shard.clock().now_cl_ms();
        let ns = exec::Namespace {
            now_s: (now_cl_ms / 1000) as u32,
            default_ttl_s: settings.default_ttl_s.load(std::sync::atomic::Ordering::Relaxed),
            ttl_allowed: settings.ttl_allowed(),
        };
        match codec::filter_for(cmd, now_cl_ms) {
            Ok(Some(f)) => exec::apply_in(cmd, cur, Some(&|r: &Record| f(r)), ns),
            Ok(None) => exec::apply_in(cmd, cur, None, ns),
            Err(code) => Action::Reply(Reply::code(code)),
        }
    }

    /// Answers command `key`, frees it, and starts the next command on its digest.
    fn finish(&mut self, key: Key, reply: Reply) {
        let p = self.cmds.slab.remove(key).expect("finishing a live command");
        self.deliver_reply(p.origin, &reply);
        self.next_on_digest(&p.cmd.digest);
    }

    /// Encodes and delivers `reply` (a batch row's with its index).
    pub(crate) fn deliver_reply(&mut self, origin: Origin, reply: &Reply) {
        if origin.worker == self.id && origin.row.is_none() {
            // A connection of this core: encoded straight into its send buffer.
            let conn = origin.conn;
            let Some(out) = self.conns.out(conn) else { return };
            codec::encode_reply_into(reply, 0, out);
            self.answered(conn);
            return;
        }
        let bytes = match origin.row {
            Some(index) => codec::encode_row(reply, index),
            None => codec::encode_reply(reply),
        };
        self.deliver(origin, bytes);
    }

    /// Starts the next command waiting on `digest` (or passes it on if the partition moved).
    pub(crate) fn next_on_digest(&mut self, digest: &crate::digest::Digest) {
        while let Some(k) = self.cmds.digests.leave(digest) {
            let owner = self.owner(digest);
            if owner == self.id {
                self.run_cmd(k);
                return;
            }
            let p = self.cmds.slab.remove(k).expect("a queued command is live");
            self.dispatch(owner, p.origin, p.cmd);
        }
    }

    /// The master's copy of command `key`'s record could not be read: a read-only command is
    /// served from the replica's copy when that copy is complete and its device alive (never
    /// the damaged data, never an error the replica can avoid); anything else answers the
    /// error.
    fn read_failed(&mut self, key: Key, e: &ReadError) {
        self.count_read_failure(e);
        let p = self.pending(key);
        let roles = self.shared.pmap.get(p.cmd.digest.partition_id());
        let replica = roles
            .replica()
            .filter(|&r| roles.complete && !self.shared.device_failed[r].load(std::sync::atomic::Ordering::Acquire));
        match replica {
            Some(r)
                if matches!(e, ReadError::Corrupt { .. } | ReadError::Device(_))
                    && !p.cmd.is_write()
                    && !p.cmd.is_delete() =>
            {
                let p = self.cmds.slab.remove(key).expect("live");
                let digest = p.cmd.digest;
                self.send(
                    r,
                    CoreMsg::Repl(ReplMsg::ReplicaRead {
                        origin: p.origin,
                        cmd: p.cmd,
                    }),
                );
                self.next_on_digest(&digest);
            }
            _ => self.finish(key, Reply::code(read_error_code(e))),
        }
    }
}

pub(crate) fn read_error_code(e: &ReadError) -> u8 {
    use proto::result_code as rc;
    match e {
        ReadError::NotFound => rc::KEY_NOT_FOUND,
        ReadError::Overload => rc::DEVICE_OVERLOAD,
        ReadError::Corrupt { .. } | ReadError::Device(_) => rc::SERVER_ERROR,
    }
}

pub(crate) fn write_error_code(e: &WriteError) -> u8 {
    use proto::result_code as rc;
    match e {
        WriteError::OutOfSpace => rc::OUT_OF_SPACE,
        WriteError::RecordTooBig { .. } => rc::RECORD_TOO_BIG,
        WriteError::Overload(_) => rc::DEVICE_OVERLOAD,
        WriteError::NotFound => rc::KEY_NOT_FOUND,
        WriteError::Invalid(_) => rc::PARAMETER,
        WriteError::DeviceFailed(_) => rc::SERVER_ERROR,
    }
}
