//! One worker per core: a reactor that polls its sources in a fixed order and dispatches
//! (DESIGN.md, "A reactor per core, generic over its sources").
//!
//! The reactor is generic over the four things that differ between a laptop, a lab machine and
//! a simulation: the network ([`NetQueue`]: epoll, io_uring, DPDK, simulated), the block device
//! ([`BlockDevice`], inside the shard), the clock ([`Clock`]) and the doorbell another core
//! rings to wake it ([`Doorbell`]). A turn ([`Reactor::turn`]):
//!
//! 1. **network**: hand the last turn's replies over and wait (at most the timeout) for
//!    something to happen; then take every event: accepts, received bytes (framed by
//!    [`super::conn`]), buffers sent, connections gone;
//! 2. **requests**: serve every connection that has a whole request;
//! 3. **rings**: messages from the other cores ([`super::msg`]);
//! 4. **device**: the shard's completions and timers ([`super::owner`] continues the commands
//!    they belong to);
//! 5. **streams**: batch rows ([`super::batch`]), scan parts ([`super::scan_coord`]);
//! 6. **housekeeping**: truncate sweeps, replication and reconciliation ([`super::repl`]),
//!    messages a full ring refused, gauges;
//! 7. **hand-off**: every connection's new reply bytes, pauses and closes go to the network.
//!
//! [`Reactor::run`] loops turns; when a turn found nothing to do it parks: it announces itself
//! parked ([`super::ring::Parking`]), checks its rings once more, and waits in the network's
//! poll until a client, a device completion (the device's completion fd) or a doorbell wakes
//! it. With `busy_poll` it never sleeps.

use super::cmd::{Cmds, Slab, Token, TokenKind};
use super::codec::{self, Decoded};
use super::conn::{ConnLimits, Conns, FrameStatus, Job};
use super::msg::{CmdMsg, CoreMsg, Origin, ScanMsg};
use super::repl::Repl;
use super::ring::{Parking, WorkerRings};
use super::scan::ScanTask;
use super::stats::Hist;
use super::NodeShared;
use crate::clock::Clock;
use crate::digest::Digest;
use crate::proto::ProtoHeader;
use crate::shard::{Event, Shard};
use crate::truncate::TruncateTable;
use bolide_drivers::net::{ConnId, Doorbell, NetError, NetEvent, NetQueue};
use bolide_drivers::BlockDevice;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a worker sleeps with nothing to do, so flush and expiry timers run.
pub const IDLE_POLL: Duration = Duration::from_millis(5);
/// How often a worker publishes its gauges (objects, bytes) for info commands.
const PUBLISH_PERIOD_MS: u64 = 10;
/// How often idle connections are looked for.
const IDLE_SWEEP_PERIOD_MS: u64 = 1000;

/// How a reactor runs.
#[derive(Clone, Debug, Default)]
pub struct ReactorOptions {
    /// Never sleep: poll every source every turn (a profile's `polling = "busy"`).
    pub busy_poll: bool,
    pub conn_limits: ConnLimits,
    /// Bytes of this worker's record cache (0 = none).
    pub record_cache_bytes: u64,
}

/// Counters of one reactor (for per-operation figures and `statistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorCounters {
    /// Turns run, and turns that parked.
    pub turns: u64,
    pub parks: u64,
    /// Requests taken off connections.
    pub requests: u64,
    /// Connections refused because `max_connections` were open.
    pub refused: u64,
}

/// Everything a worker owns except its network queue.
pub struct Core<D: BlockDevice, C: Clock, B: Doorbell> {
    pub(crate) id: usize,
    pub(crate) shard: Shard<D, C>,
    pub(crate) shared: Arc<NodeShared>,
    pub(crate) rings: WorkerRings<CoreMsg, B>,
    pub(crate) parking: Arc<Parking<B>>,
    pub(crate) conns: Conns,
    /// Connections with new bytes to serve this turn.
    pub(crate) readable: Vec<ConnId>,
    /// The other half of `readable`'s double buffer (empty between turns).
    readable_spare: Vec<ConnId>,
    /// Connections to close at the end of the turn.
    pub(crate) to_close: Vec<ConnId>,
    pub(crate) cmds: Cmds,
    /// Device reads of scan parts: the part's key (coordinator, scan id).
    pub(crate) scan_reads: Slab<(usize, u64)>,
    /// Messages a full ring refused, retried every turn (bounded by the connections).
    pub(crate) outbox: VecDeque<(usize, CoreMsg)>,
    /// Stream messages to this worker from itself, handled with the rings.
    pub(crate) local: VecDeque<CoreMsg>,
    /// Connections whose batch has rows not yet started.
    pub(crate) batch_conns: Vec<ConnId>,
    /// This worker's parts of scans, by (coordinating worker, scan id).
    pub(crate) scans: HashMap<(usize, u64), ScanTask>,
    pub(crate) next_scan_id: u64,
    /// Connections whose scan is held back by its RECORDS_PER_SECOND.
    pub(crate) throttled: Vec<ConnId>,
    /// This worker's copy of the truncate table, the version it was copied at, and the
    /// namespace cut-off still being swept from the index (with the next partition to sweep).
    pub(crate) truncate: Arc<TruncateTable>,
    pub(crate) truncate_version: u64,
    pub(crate) truncate_sweep: Option<(u64, u16)>,
    pub(crate) repl: Repl,
    /// Verified records read for client commands ([`super::cache`]).
    pub(crate) cache: super::cache::RecordCache,
    events: Vec<Event>,
    next_publish_ms: u64,
    next_idle_sweep_ms: u64,
    /// `counters.refused` when the refusals were last logged (once per idle sweep at most).
    refused_logged: u64,
    pub(crate) counters: ReactorCounters,
    opts: ReactorOptions,
}

/// One worker: its network queue and everything else.
pub struct Reactor<N: NetQueue, D: BlockDevice, C: Clock, B: Doorbell> {
    net: N,
    core: Core<D, C, B>,
}

impl<N: NetQueue, D: BlockDevice, C: Clock, B: Doorbell> Reactor<N, D, C, B> {
    /// A reactor for worker `id` over `net` (already listening, with the device's completion
    /// fd and this worker's doorbell watched), `shard`, its ring ends and its parking.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        net: N,
        shard: Shard<D, C>,
        rings: WorkerRings<CoreMsg, B>,
        parking: Arc<Parking<B>>,
        shared: Arc<NodeShared>,
        sync_todo: Vec<crate::digest::PartitionId>,
        opts: ReactorOptions,
    ) -> Reactor<N, D, C, B> {
        let truncate = Arc::clone(
            &shared
                .truncate
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let now = shard.clock().mono_ms();
        let repl = Repl::new(sync_todo, shared.rereplication_records_per_second, now);
        Reactor {
            net,
            core: Core {
                id,
                shard,
                rings,
                parking,
                conns: Conns::new(opts.conn_limits),
                readable: Vec::new(),
                readable_spare: Vec::new(),
                to_close: Vec::new(),
                cmds: Cmds::default(),
                scan_reads: Slab::default(),
                outbox: VecDeque::new(),
                local: VecDeque::new(),
                batch_conns: Vec::new(),
                scans: HashMap::new(),
                next_scan_id: 0,
                throttled: Vec::new(),
                truncate,
                truncate_version: 0,
                truncate_sweep: None,
                repl,
                cache: super::cache::RecordCache::new(opts.record_cache_bytes),
                events: Vec::new(),
                next_publish_ms: 0,
                next_idle_sweep_ms: now + IDLE_SWEEP_PERIOD_MS,
                refused_logged: 0,
                counters: ReactorCounters::default(),
                opts,
                shared,
            },
        }
    }

    /// One turn (see the module docs), waiting at most `timeout` for the network.
    ///
    /// # Errors
    /// The network's poll failed (logged by [`Reactor::run`], which carries on).
    pub fn turn(&mut self, timeout: Duration) -> Result<(), NetError> {
        let core = &mut self.core;
        core.counters.turns += 1;
        let polled = self.net.poll(timeout);
        let now_ms = core.shard.clock().mono_ms();
        while let Some(ev) = self.net.next_event() {
            match ev {
                NetEvent::Accepted { listener, conn } => core.on_accept(conn, listener.0, now_ms),
                NetEvent::Received { conn, bytes } => {
                    core.conns.on_data(conn, bytes, now_ms);
                    core.readable.push(conn);
                }
                NetEvent::Sent { conn, buf } => core.on_sent(conn, buf),
                NetEvent::Closed { conn, .. } => core.on_closed(conn),
            }
        }
        core.work(now_ms);
        let net = &mut self.net;
        core.conns.flush(|c, b| net.send(c, b).map_err(|e| e.into_buf()));
        if core.conns.has_pauses() {
            for (c, paused) in core.conns.take_pauses() {
                net.set_recv_paused(c, paused);
            }
        }
        for c in core.to_close.drain(..) {
            net.close(c);
        }
        polled
    }

    /// Runs turns until the node's stop flag is set; returns the shard for a clean shutdown.
    pub fn run(mut self) -> Shard<D, C> {
        let sleeps = self.net.can_sleep() && !self.core.opts.busy_poll;
        // The device signals its completion fd only while this core sleeps on it.
        self.core.shard.device_mut().set_completion_signals(false);
        while !self.core.shared.stop.load(Ordering::Relaxed) {
            let mut timeout = Duration::ZERO;
            let mut parked = false;
            if sleeps && !self.core.has_work() {
                self.core.parking.park();
                self.core.shard.device_mut().set_completion_signals(true);
                // Dekker: after announcing, look once more (a push may have missed the flag,
                // a completion may have come while the device's signals were off).
                if self.core.rings.any_inbound()
                    || self.core.has_work()
                    || self.core.shard.device_mut().has_completions()
                {
                    self.core.parking.unpark();
                    self.core.shard.device_mut().set_completion_signals(false);
                } else {
                    parked = true;
                    self.core.counters.parks += 1;
                    timeout = IDLE_POLL;
                }
            }
            if let Err(e) = self.turn(timeout) {
                tracing::error!(worker = self.core.id, "network poll failed: {e}");
            }
            if parked {
                self.core.parking.unpark();
                self.core.shard.device_mut().set_completion_signals(false);
            }
        }
        self.into_shard()
    }

    /// Ends the reactor (connections close with the network queue) and returns the shard.
    pub fn into_shard(self) -> Shard<D, C> {
        self.core.shard
    }

    /// The network queue (tests and tools read its counters).
    pub fn net(&self) -> &N {
        &self.net
    }

    pub fn net_mut(&mut self) -> &mut N {
        &mut self.net
    }

    /// The shard (tests inspect it between turns).
    pub fn shard(&self) -> &Shard<D, C> {
        &self.core.shard
    }

    pub fn shard_mut(&mut self) -> &mut Shard<D, C> {
        &mut self.core.shard
    }

    pub fn counters(&self) -> ReactorCounters {
        self.core.counters
    }

    /// Whether a turn now would make progress without waiting for the network.
    pub fn has_work(&self) -> bool {
        self.core.has_work() || self.core.rings.any_inbound()
    }

    /// Cross-core messages this worker sent.
    pub fn messages_sent(&self) -> u64 {
        self.core.rings.sent
    }
}

impl<D: BlockDevice, C: Clock, B: Doorbell> Core<D, C, B> {
    /// Work that does not need the network: streams to push, messages to handle, device I/O in
    /// flight on a device that has no completion fd to wake us.
    fn has_work(&self) -> bool {
        !self.batch_conns.is_empty()
            || !self.local.is_empty()
            || !self.outbox.is_empty()
            || !self.readable.is_empty()
            || !self.throttled.is_empty()
            || self.scans.values().any(ScanTask::runnable)
            || !self.repl.sync.idle()
            || !self.repl.repair_retry.is_empty()
            || (self.shard.in_flight() > 0 && self.shard.device().completion_fd().is_none())
    }

    fn work(&mut self, now_ms: u64) {
        self.serve_readable();
        self.drain_rings();
        self.drive_shard();
        self.pump_batches();
        self.refresh_truncate();
        self.release_throttled();
        self.run_scans();
        self.sweep_truncated();
        self.check_device();
        self.run_sync();
        self.retry_repairs();
        self.flush_outbox();
        // Reads and group-commit flushes queued after drive_shard (scans, batch rows,
        // re-replication) go to the device now, not after the next wake-up.
        self.shard.submit_queued();
        if now_ms >= self.next_publish_ms {
            self.next_publish_ms = now_ms + PUBLISH_PERIOD_MS;
            self.publish();
        }
        if now_ms >= self.next_idle_sweep_ms {
            self.next_idle_sweep_ms = now_ms + IDLE_SWEEP_PERIOD_MS;
            self.sweep_settings();
            for c in self.conns.idle(now_ms) {
                tracing::debug!(worker = self.id, conn = ?c, "closing an idle connection");
                self.close(c);
            }
        }
        if self.id == 0 {
            self.shared.latencies.tick(Instant::now());
        }
    }

    // ----- connections -----

    fn on_accept(&mut self, conn: ConnId, listener: u32, now_ms: u64) {
        let open = self.shared.connections.load(Ordering::Relaxed);
        if open >= self.shared.max_connections {
            self.counters.refused += 1;
            self.shared.refused_connections.fetch_add(1, Ordering::Relaxed);
            self.to_close.push(conn);
            return;
        }
        self.shared.connections.fetch_add(1, Ordering::Relaxed);
        self.conns.accept(conn, listener, now_ms);
    }

    fn on_sent(&mut self, conn: ConnId, buf: Vec<u8>) {
        self.conns.on_sent(conn, buf);
        // The socket caught up: scan parts waiting for credit may go on.
        self.grant_owed(conn);
    }

    /// The network says `conn` is gone.
    fn on_closed(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(conn) {
            self.forget(c);
        }
    }

    /// Closes `conn` on our side (bad stream, idle, unreadable request).
    pub(crate) fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(conn) {
            self.to_close.push(conn);
            self.forget(c);
        }
    }

    fn forget(&mut self, c: super::conn::Conn) {
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        if let Some(Job::Scan(s)) = c.job {
            for o in s.owners {
                self.post(
                    o,
                    CoreMsg::Scan(ScanMsg::Cancel {
                        from: self.id,
                        scan_id: s.id,
                    }),
                );
            }
        }
    }

    fn serve_readable(&mut self) {
        // Two vectors swapped turn by turn, both keeping their capacity: connections answered
        // while serving (a local GET is answered at once) go to the other one.
        let mut ready = std::mem::take(&mut self.readable_spare);
        std::mem::swap(&mut ready, &mut self.readable);
        for conn in &ready {
            self.serve(*conn);
        }
        ready.clear();
        self.readable_spare = ready;
    }

    /// Takes the next whole request off the connection, if it is idle, and serves it.
    pub(crate) fn serve(&mut self, conn: ConnId) {
        loop {
            match self.conns.frame(conn) {
                FrameStatus::Incomplete => break,
                FrameStatus::Bad(e) => {
                    tracing::debug!(worker = self.id, ?conn, "closing: {e}");
                    self.close(conn);
                    return;
                }
                FrameStatus::Ready(hdr, total) => {
                    self.counters.requests += 1;
                    let rbuf = self.conns.take_rbuf(conn);
                    self.handle_frame(conn, hdr, &rbuf[crate::proto::PROTO_HEADER_BYTES..total]);
                    self.conns.consumed(conn, rbuf, total);
                }
            }
        }
        if self.conns.get(conn).is_some_and(|c| c.closing && !c.busy) {
            self.close(conn);
        }
    }

    fn handle_frame(&mut self, conn: ConnId, hdr: ProtoHeader, body: &[u8]) {
        let local = Origin {
            worker: self.id,
            conn,
            row: None,
        };
        let decoded = codec::decode(hdr.ptype, body, &self.shared.namespace);
        let hist = match &decoded {
            Decoded::Single(cmd) if cmd.is_write() || cmd.is_delete() => Some(Hist::Write),
            Decoded::Single(_) => Some(Hist::Read),
            Decoded::Batch(_) => Some(Hist::Batch),
            Decoded::Scan(..) => Some(Hist::Query),
            _ => None,
        };
        if let (Some(h), Some(c)) = (hist, self.conns.get_mut(conn)) {
            c.started = Some((Instant::now(), h));
        }
        match decoded {
            Decoded::Reply(bytes) => self.deliver(local, bytes),
            Decoded::Info => {
                let listener = self.conns.get(conn).map_or(0, |c| c.listener);
                let view = self.shared.view(self.id, listener);
                let bytes = codec::info_reply(body, &self.shared, view, self.shard.clock().now_cl_ms());
                self.deliver(local, bytes);
            }
            Decoded::Close => {
                self.close(conn);
            }
            Decoded::Single(cmd) => {
                let owner = self.owner(&cmd.digest);
                self.dispatch(owner, local, cmd);
            }
            Decoded::Batch(items) => self.start_batch(conn, items),
            Decoded::Scan(spec, parts) => self.start_scan(conn, spec, parts),
        }
    }

    /// The request on `conn` has been answered in full: count its latency, serve the next.
    pub(crate) fn answered(&mut self, conn: ConnId) {
        if let Some((at, hist)) = self.conns.done(conn) {
            self.shared.latencies.record(self.id, hist, at.elapsed());
        }
        self.readable.push(conn);
    }

    /// Sends reply bytes to where the request came from.
    pub(crate) fn deliver(&mut self, origin: Origin, bytes: Vec<u8>) {
        if origin.worker != self.id {
            self.send(
                origin.worker,
                CoreMsg::Cmd(CmdMsg::Reply {
                    conn: origin.conn,
                    row: origin.row.is_some(),
                    bytes,
                }),
            );
            return;
        }
        if origin.row.is_some() {
            self.row_done(origin.conn, &bytes);
            return;
        }
        let conn = origin.conn;
        let Some(out) = self.conns.out(conn) else { return };
        out.extend_from_slice(&bytes);
        self.answered(conn);
    }

    // ----- routing and rings -----

    /// The worker serving `digest`'s partition now (the partition map's master).
    pub(crate) fn owner(&self, digest: &Digest) -> usize {
        self.shared.pmap.master(digest.partition_id())
    }

    /// Runs `cmd` here or sends it to its owner.
    pub(crate) fn dispatch(&mut self, owner: usize, origin: Origin, cmd: Box<super::exec::Command>) {
        if owner == self.id {
            self.start(origin, cmd);
        } else {
            self.send(owner, CoreMsg::Cmd(CmdMsg::Run { origin, cmd }));
        }
    }

    /// Sends a stream message, to this worker itself through its local queue.
    pub(crate) fn post(&mut self, to: usize, msg: CoreMsg) {
        if to == self.id {
            self.local.push_back(msg);
        } else {
            self.send(to, msg);
        }
    }

    pub(crate) fn send(&mut self, to: usize, msg: CoreMsg) {
        if !self.outbox.is_empty() {
            self.outbox.push_back((to, msg));
            return;
        }
        if let Err(msg) = self.rings.push(to, msg) {
            self.outbox.push_back((to, msg));
        }
    }

    fn flush_outbox(&mut self) {
        while let Some((to, msg)) = self.outbox.pop_front() {
            if let Err(msg) = self.rings.push(to, msg) {
                self.outbox.push_front((to, msg));
                return;
            }
        }
    }

    fn drain_rings(&mut self) {
        for from in 0..self.rings.workers() {
            if from == self.id {
                continue;
            }
            while let Some(msg) = self.rings.pop(from) {
                self.handle_msg(msg);
            }
        }
        while let Some(msg) = self.local.pop_front() {
            self.handle_msg(msg);
        }
    }

    fn handle_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Cmd(CmdMsg::Run { origin, cmd }) => self.start(origin, cmd),
            CoreMsg::Cmd(CmdMsg::Reply { conn, row: true, bytes }) => self.row_done(conn, &bytes),
            CoreMsg::Cmd(CmdMsg::Reply { conn, row: false, bytes }) => self.deliver(
                Origin {
                    worker: self.id,
                    conn,
                    row: None,
                },
                bytes,
            ),
            CoreMsg::Scan(m) => self.on_scan_msg(m),
            CoreMsg::Repl(m) => self.on_repl_msg(m),
        }
    }

    // ----- the device -----

    fn drive_shard(&mut self) {
        let mut evs = std::mem::take(&mut self.events);
        self.shard.poll(&mut evs);
        for ev in evs.drain(..) {
            match ev {
                Event::ReadDone { token, result } => {
                    let t = Token(token);
                    match t.kind() {
                        Some(TokenKind::Cmd) => self.cmd_read_done(t.key(), result),
                        Some(TokenKind::Scan) => {
                            if let Err(e) = &result {
                                self.count_read_failure(e);
                            }
                            if let Some(key) = self.scan_reads.remove(t.key()) {
                                if let Some(task) = self.scans.get_mut(&key) {
                                    task.complete(token, result);
                                }
                            }
                        }
                        Some(TokenKind::RepairRead) => self.repair_read_done(t.key(), result),
                        Some(TokenKind::ReplicaRead) => self.replica_read_done(t.key(), result),
                        other => panic!("read completion with a write token {other:?} ({token:#x})"),
                    }
                }
                Event::WriteDone { token, result } => {
                    let t = Token(token);
                    match t.kind() {
                        Some(TokenKind::Cmd) => {
                            let code = result.as_ref().map_or_else(super::owner::write_error_code, |()| 0);
                            self.write_acked(t.key(), code);
                        }
                        Some(TokenKind::ReplicaWrite) => self.replica_write_done(t.key(), result),
                        other => panic!("write completion with a read token {other:?} ({token:#x})"),
                    }
                }
            }
        }
        self.events = evs;
    }

    // ----- truncate -----

    /// Takes a new truncate table if one was published: raises the shard's LUT floor above
    /// every cut-off and starts sweeping a new namespace cut-off from the index. Called before
    /// each command, so a command that follows an acknowledged truncate sees it.
    pub(crate) fn refresh_truncate(&mut self) {
        let v = self.shared.truncate_version.load(Ordering::Acquire);
        if v == self.truncate_version {
            return;
        }
        let table = Arc::clone(
            &self
                .shared
                .truncate
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.truncate_version = v;
        self.shard.set_lut_floor(table.max_cutoff_ms());
        if table.namespace_lut_ms() > self.truncate.namespace_lut_ms() {
            self.truncate_sweep = Some((table.namespace_lut_ms(), 0));
        }
        self.truncate = table;
    }

    /// Removes namespace-truncated records of a few more partitions (64 per turn), so their
    /// space comes back without blocking the loop.
    fn sweep_truncated(&mut self) {
        let Some((cutoff, mut pid)) = self.truncate_sweep else {
            return;
        };
        // Every partition: this shard may hold replica copies of partitions it does not master.
        let mut removed = 0;
        for _ in 0..64 {
            if usize::from(pid) >= crate::digest::N_PARTITIONS {
                break;
            }
            removed += self.shard.truncate_partition(crate::digest::PartitionId(pid), cutoff);
            pid += 1;
        }
        if removed > 0 {
            tracing::debug!(worker = self.id, removed, "truncate sweep");
        }
        self.truncate_sweep = (usize::from(pid) < crate::digest::N_PARTITIONS).then_some((cutoff, pid));
    }

    // ----- gauges -----

    /// Publishes this worker's gauges for info commands.
    /// Once per idle sweep: takes the live `proto-fd-idle-ms` and `nsup-period` (set-config
    /// changes them at run time), and logs the connections refused since the last sweep, once,
    /// not once per refusal.
    fn sweep_settings(&mut self) {
        let settings = &self.shared.settings;
        self.conns.limits.idle_ms = settings.proto_fd_idle_ms.load(Ordering::Relaxed);
        let nsup_ms = settings.nsup_period_ms.load(Ordering::Relaxed);
        if self.shard.config().nsup_period_ms != nsup_ms {
            self.shard.set_nsup_period_ms(nsup_ms);
        }
        let refused = self.counters.refused - self.refused_logged;
        if refused > 0 {
            self.refused_logged = self.counters.refused;
            tracing::warn!(
                worker = self.id,
                refused,
                max_connections = self.shared.max_connections,
                total_refused = self.shared.refused_connections.load(Ordering::Relaxed),
                "refused client connections in the last {IDLE_SWEEP_PERIOD_MS} ms: max_connections are open \
                 (set proto_fd_idle_ms, or set-config proto-fd-idle-ms, to close idle ones)"
            );
        }
    }

    fn publish(&mut self) {
        let s = &self.shared;
        let w = &s.workers[self.id];
        if s.replication_factor > 1 {
            let n: usize = s
                .pmap
                .mastered_by(self.id)
                .map(|p| self.shard.index().partition_len(p))
                .sum();
            w.master_entries.store(n as u64, Ordering::Relaxed);
        }
        let space = self.shard.space();
        w.index_entries.store(self.shard.index().len() as u64, Ordering::Relaxed);
        w.live_bytes.store(space.live_bytes, Ordering::Relaxed);
        w.capacity_bytes.store(
            space.wblocks_total as u64 * self.shard.config().wblock_size_bytes as u64,
            Ordering::Relaxed,
        );
        w.requests.store(self.counters.requests, Ordering::Relaxed);
        w.messages_sent.store(self.rings.sent, Ordering::Relaxed);
        w.doorbells.store(self.parking.rings(), Ordering::Relaxed);
        w.cache_hits.store(self.cache.counters.hits, Ordering::Relaxed);
        w.cache_misses.store(self.cache.counters.misses, Ordering::Relaxed);
        w.cache_used_bytes.store(self.cache.used_bytes(), Ordering::Relaxed);
        let st = self.shard.stats();
        w.reads_ram.store(st.reads_ram, Ordering::Relaxed);
        w.reads_device.store(st.reads_device, Ordering::Relaxed);
        w.client_bytes.store(st.client_bytes, Ordering::Relaxed);
        w.defrag_bytes.store(st.defrag_bytes, Ordering::Relaxed);
        w.device_write_bytes.store(st.device_write_bytes, Ordering::Relaxed);
        w.wblocks_defragged.store(st.wblocks_defragged, Ordering::Relaxed);
        w.read_corrupt.store(st.read_corrupt, Ordering::Relaxed);
        w.writes_refused_space.store(st.writes_refused_space, Ordering::Relaxed);
        w.writes_refused_overload.store(st.writes_refused_overload, Ordering::Relaxed);
        w.wblocks_free.store(u64::from(space.wblocks_free), Ordering::Relaxed);
        w.device_in_flight.store(self.shard.in_flight() as u64, Ordering::Relaxed);
    }
}
