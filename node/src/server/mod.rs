//! The Aerospike-protocol server: one [`reactor`] per core drives its shard from client
//! connections. Each concern has its module: [`conn`] (framing, reply buffers,
//! back-pressure), [`cmd`] and [`owner`] (the per-command state machine on a partition's
//! owner), [`batch`] and [`scan_coord`]/[`scan`] (streams), [`repl`] (replication, failover,
//! reconciliation), [`msg`] (what crosses the rings), [`exec`] (single-record semantics) and
//! [`codec`] (the glue to the wire codec in [`crate::proto`]).
//!
//! [`Server::start`] is the composition root: it picks the network backend
//! ([`ServerConfig::network`]) and the listener layout ([`ListenMode`]), then starts one
//! pinned thread per shard.

pub mod batch;
pub mod cache;
pub mod cmd;
pub mod codec;
pub mod conn;
pub mod exec;
pub mod msg;
pub mod owner;
pub mod reactor;
pub mod repl;
pub mod replica;
pub mod ring;
pub mod scan;
pub mod scan_coord;
pub mod stats;
pub mod sync;

use crate::clock::Clock;
use crate::shard::Shard;
use crate::truncate::TruncateTable;
use bolide_drivers::fault::FaultSwitch;
use bolide_drivers::net::{Doorbell, EventFdDoorbell, ListenOptions, NetDriver, NetError, NetQueue};
use bolide_drivers::BlockDevice;
use conn::ConnLimits;
use reactor::{Reactor, ReactorOptions};
use replica::{PartitionMap, Roles};
use ring::Parking;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};

/// How the workers present themselves to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenMode {
    /// One node: every worker accepts on `listen` (`SO_REUSEPORT`, the kernel spreads
    /// connections); a request for a partition another worker owns crosses a ring.
    Shared,
    /// Every core is a node (DESIGN.md): worker `k` listens on `listen`'s port + `k` with its
    /// own node id, and its `replicas` answer names only its partitions, so partition-aware
    /// clients send each command straight to the core that owns it.
    PerCore,
}

impl ListenMode {
    /// Parses the config value (`"shared"`, `"per-core"`).
    pub fn parse(s: &str) -> Option<ListenMode> {
        match s {
            "shared" => Some(ListenMode::Shared),
            "per-core" | "per_core" => Some(ListenMode::PerCore),
            _ => None,
        }
    }
}

/// Node-wide settings of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where clients connect: the node's address (shared mode), or worker 0's (per-core mode:
    /// worker `k` at port + `k`).
    pub listen: SocketAddr,
    pub listen_mode: ListenMode,
    /// The network backend.
    pub network: NetDriver,
    /// Never sleep in the poll loop (a profile's `polling = "busy"`).
    pub busy_poll: bool,
    pub conn_limits: ConnLimits,
    /// The one namespace served.
    pub namespace: String,
    /// Node name reported by `node` (uppercase hex, at most 19 characters, spec §2.2); in
    /// per-core mode worker `k` reports this id plus `k`.
    pub node_name: String,
    pub cluster_name: String,
    /// Client connections accepted at once, over all workers.
    pub max_connections: usize,
    /// Slots in each cross-core ring.
    pub ring_capacity: usize,
    /// The namespace's truncate cut-offs as loaded at start-up (already re-applied to the shards).
    pub truncate: TruncateTable,
    /// Where truncates are saved before they are acknowledged; `None` keeps them in memory only
    /// (tests).
    pub truncate_path: Option<PathBuf>,
    /// Copies of every record: 1 or 2 (a second copy on another worker's device).
    pub replication_factor: u8,
    /// The device of each worker (an index into the profile's devices); workers on one device
    /// never replicate to each other.
    pub device_of: Vec<usize>,
    /// Per worker: its shard was blank at this start (formatted: a new or replaced device), so
    /// its copies must be rebuilt from the other workers' before it can be trusted.
    pub fresh: Vec<bool>,
    /// Per worker, the switch that fails its device (the `fail-device` info command); empty
    /// unless `fault_injection` is configured.
    pub fault_switches: Vec<FaultSwitch>,
    /// Re-replication and repair: records copied per second, per worker (0 = unlimited).
    pub rereplication_records_per_second: u32,
    /// The namespace's storage settings (reported by `get-config`).
    pub storage: crate::config::StorageConfig,
    /// Start-up values of the settings `set-config` may change.
    pub settings: crate::config::Settings,
    /// Per shard: bytes of the RAM record cache ([`cache`]); 0 = no cache.
    pub record_cache_bytes: u64,
}

impl ServerConfig {
    /// A single-copy server on `listen` for `namespace` with default settings (tests, tools).
    pub fn new(listen: SocketAddr, namespace: &str, workers: usize) -> ServerConfig {
        ServerConfig {
            listen,
            listen_mode: ListenMode::Shared,
            network: NetDriver::Epoll,
            busy_poll: false,
            conn_limits: ConnLimits::default(),
            namespace: namespace.to_string(),
            node_name: "BB9000000000001".into(),
            cluster_name: "bolide".into(),
            max_connections: 10_000,
            ring_capacity: 4096,
            truncate: TruncateTable::default(),
            truncate_path: None,
            replication_factor: 1,
            device_of: (0..workers).collect(),
            fresh: vec![false; workers],
            fault_switches: Vec::new(),
            rereplication_records_per_second: 50_000,
            storage: crate::config::StorageConfig::default(),
            settings: crate::config::Settings::default(),
            record_cache_bytes: 0,
        }
    }
}

/// One worker's gauges, published every few milliseconds for info commands; on its own cache
/// lines so that workers never write the same line.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerGauges {
    /// Index entries (records and tombstones), live record bytes and device capacity.
    pub index_entries: AtomicU64,
    pub live_bytes: AtomicU64,
    pub capacity_bytes: AtomicU64,
    /// Index entries of the partitions it masters (replication on).
    pub master_entries: AtomicU64,
    /// Requests taken off its connections, cross-core messages sent, doorbells rung to it.
    pub requests: AtomicU64,
    pub messages_sent: AtomicU64,
    pub doorbells: AtomicU64,
    /// Record cache ([`cache`]): hits, misses, bytes held.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_used_bytes: AtomicU64,
    /// Record reads served from a write buffer in RAM, and from the device.
    pub reads_ram: AtomicU64,
    pub reads_device: AtomicU64,
    /// Record bytes appended for clients and by defrag, bytes written to the device (write
    /// amplification is device / client).
    pub client_bytes: AtomicU64,
    pub defrag_bytes: AtomicU64,
    pub device_write_bytes: AtomicU64,
    /// Wblocks defragged (read back and emptied), free now.
    pub wblocks_defragged: AtomicU64,
    pub wblocks_free: AtomicU64,
    /// Device I/Os submitted and not yet completed (the device queue depth now).
    pub device_in_flight: AtomicU64,
    /// Reads that found a damaged record, writes refused for space or overload.
    pub read_corrupt: AtomicU64,
    pub writes_refused_space: AtomicU64,
    pub writes_refused_overload: AtomicU64,
}

/// Which node an info request speaks for: the whole node (shared mode) or one worker's
/// (per-core mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// `None`: the whole node.
    pub worker: Option<usize>,
}

/// What every worker shares: settings, gauges and the stop flag. Only atomics: nothing here is
/// locked on the data path.
pub struct NodeShared {
    pub namespace: String,
    pub node_name: String,
    pub cluster_name: String,
    pub listen: SocketAddr,
    pub listen_mode: ListenMode,
    pub max_connections: usize,
    pub connections: AtomicUsize,
    /// Connections refused because `max_connections` were open.
    pub refused_connections: AtomicU64,
    pub stop: AtomicBool,
    pub workers: Vec<WorkerGauges>,
    /// The truncate table: replaced whole (under the write lock, after it is saved) by an info
    /// truncate; workers copy the `Arc` when `truncate_version` moves, so the data path only
    /// loads the atomic.
    pub truncate: RwLock<Arc<TruncateTable>>,
    pub truncate_version: AtomicU64,
    pub truncate_path: Option<PathBuf>,
    /// Transaction latency histograms (`latencies:`).
    pub latencies: stats::Latencies,
    /// Copies kept of every record (1 or 2).
    pub replication_factor: u8,
    /// Who masters and who replicates each partition.
    pub pmap: PartitionMap,
    /// Per worker: its device failed (writes stopped, partitions failed over).
    pub device_failed: Vec<AtomicBool>,
    /// Empty unless fault injection is configured.
    pub fault_switches: Vec<FaultSwitch>,
    /// The device of each worker (as [`ServerConfig::device_of`]).
    pub device_of: Vec<usize>,
    /// Partitions whose copies are still being reconciled (re-replication, cold-start repair).
    pub sync_remaining: AtomicU64,
    /// Records copied by re-replication and repair (applied: newer than the copy they replaced).
    pub rereplicated_records: AtomicU64,
    /// Record reads re-replication could not make (corrupt or device error), left uncopied.
    pub rereplication_read_errors: AtomicU64,
    /// Partitions moved to their replica because their master's device failed.
    pub partitions_failed_over: AtomicU64,
    pub rereplication_records_per_second: u32,
    /// The namespace's storage settings as started (`get-config`).
    pub storage: crate::config::StorageConfig,
    /// What `set-config` may change while the node runs.
    pub settings: crate::config::LiveSettings,
}

impl NodeShared {
    /// Records in the namespace (index entries, tombstones included), each counted once: with
    /// replication, the master copies only.
    pub fn objects(&self) -> u64 {
        if self.replication_factor > 1 {
            self.sum(|w| &w.master_entries)
        } else {
            self.sum(|w| &w.index_entries)
        }
    }

    /// Records one worker serves as master (a per-core node's `objects`).
    pub fn worker_objects(&self, w: usize) -> u64 {
        let g = &self.workers[w];
        if self.replication_factor > 1 {
            g.master_entries.load(std::sync::atomic::Ordering::Relaxed)
        } else {
            g.index_entries.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// Workers whose device failed.
    pub fn failed_devices(&self) -> usize {
        self.device_failed
            .iter()
            .filter(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    /// The sum of one gauge over every worker.
    pub fn sum(&self, f: impl Fn(&WorkerGauges) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| f(w).load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// The node an info request on worker `worker`'s connection speaks for.
    pub fn view(&self, worker: usize, _listener: u32) -> NodeView {
        match self.listen_mode {
            ListenMode::Shared => NodeView { worker: None },
            ListenMode::PerCore => NodeView { worker: Some(worker) },
        }
    }

    /// The address worker `w` serves on in per-core mode.
    pub fn worker_endpoint(&self, w: usize) -> SocketAddr {
        let mut a = self.listen;
        a.set_port(self.listen.port() + w as u16);
        a
    }

    /// The node name of worker `w` in per-core mode: the node id plus `w`.
    pub fn worker_node_name(&self, w: usize) -> String {
        match u64::from_str_radix(&self.node_name, 16) {
            Ok(id) => format!("{:X}", id.wrapping_add(w as u64)),
            Err(_) => format!("{}{w:X}", self.node_name),
        }
    }
}

/// A running server: join it to get the shards back for a clean shutdown.
pub struct Server<D: BlockDevice + 'static, C: Clock + 'static> {
    pub shared: Arc<NodeShared>,
    handles: Vec<std::thread::JoinHandle<Shard<D, C>>>,
}

/// The parts of a server before its threads start (or without threads, for a simulation that
/// steps every reactor itself): the shared state and one reactor per shard.
pub struct Built<N: NetQueue, D: BlockDevice, C: Clock, B: Doorbell> {
    pub shared: Arc<NodeShared>,
    pub reactors: Vec<Reactor<N, D, C, B>>,
}

/// The addresses each worker listens on: in shared mode every worker on `listen`; in per-core
/// mode worker `k` on `listen`'s port + `k` (port 0 stays 0: any free port, tests).
pub fn listen_addrs(cfg: &ServerConfig, workers: usize) -> Vec<(SocketAddr, ListenOptions)> {
    (0..workers)
        .map(|k| match cfg.listen_mode {
            ListenMode::Shared => (
                cfg.listen,
                ListenOptions {
                    reuse_port: true,
                    ..ListenOptions::default()
                },
            ),
            ListenMode::PerCore => {
                let mut a = cfg.listen;
                if a.port() != 0 {
                    a.set_port(cfg.listen.port() + k as u16);
                }
                (a, ListenOptions::default())
            }
        })
        .collect()
}

/// Refuses a listen address another process already holds. The shared mode binds with
/// `SO_REUSEPORT`, which would silently share the port with any other process that also set
/// it (another Bolide node, splitting its clients between two data sets): a plain bind first
/// fails if anything listens there.
///
/// # Errors
/// `AddrInUse` naming the address.
pub fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {addr}: {e} (is another node or program using this port?)"),
        )
    })
}

impl<D: BlockDevice + 'static, C: Clock + 'static> Server<D, C> {
    /// Starts one worker thread per shard (shard `i` masters the partitions `p % n == i`), each
    /// pinned to `cores[i]` when given, on the network backend `cfg.network`. With replication
    /// factor 2, a partition whose master shard is fresh while its replica's is not is served
    /// by the replica until re-replication has rebuilt the master's copy (the roles stay
    /// swapped until the next start); every other partition with a replica is reconciled in
    /// the background ([`sync`]).
    ///
    /// # Errors
    /// A listen address is in use or could not be bound, the network backend could not be set
    /// up, or the replication settings are impossible (`InvalidInput`: factor 2 on one device).
    pub fn start(
        cfg: &ServerConfig,
        shards: Vec<Shard<D, C>>,
        cores: Vec<Option<core_affinity::CoreId>>,
    ) -> std::io::Result<Server<D, C>> {
        use bolide_drivers::net::{epoll::EpollNet, uring::{UringNet, UringNetOptions}};
        let io = |e: NetError| std::io::Error::other(e.to_string());
        if cfg.listen_mode == ListenMode::Shared && cfg.listen.port() != 0 {
            // Kernel sockets: SO_REUSEPORT would share the port with another node.
            check_port_free(cfg.listen)?;
        }
        match cfg.network {
            NetDriver::Epoll => Self::start_with(cfg, shards, cores, |_| EpollNet::new().map_err(io)),
            NetDriver::Uring => Self::start_with(cfg, shards, cores, |_| UringNet::new(&UringNetOptions::default()).map_err(io)),
        }
    }

    /// As [`Server::start`], on the network queues `make_net` makes (one per worker, made on
    /// this thread and moved to the worker's).
    ///
    /// # Errors
    /// As [`Server::start`].
    pub fn start_with<N: NetQueue + 'static>(
        cfg: &ServerConfig,
        shards: Vec<Shard<D, C>>,
        cores: Vec<Option<core_affinity::CoreId>>,
        make_net: impl FnMut(usize) -> std::io::Result<N>,
    ) -> std::io::Result<Server<D, C>> {
        let n = shards.len();
        let bells = (0..n).map(|_| EventFdDoorbell::new()).collect::<std::io::Result<Vec<_>>>()?;
        let built = build(cfg, shards, make_net, bells)?;
        let shared = Arc::clone(&built.shared);
        let mut handles = Vec::with_capacity(n);
        for (i, r) in built.reactors.into_iter().enumerate() {
            let core = cores.get(i).copied().flatten();
            let h = std::thread::Builder::new()
                .name(format!("bolide-w{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(c) {
                            tracing::warn!(worker = i, "could not pin to core {}", c.id);
                        }
                    }
                    r.run()
                })?;
            handles.push(h);
        }
        Ok(Server { shared, handles })
    }

    /// Stops every worker and returns their shards (in worker order) for a clean shutdown.
    ///
    /// # Panics
    /// If a worker panicked.
    pub fn stop(self) -> Vec<Shard<D, C>> {
        self.shared.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    }

    /// Whether a signal or an error asked the server to stop.
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Builds the shared state and one reactor per shard: validates the replication settings,
/// sets up the partition roles, makes each worker's network queue (`make_net`), listens, and
/// has each queue watch its device's completion fd and its doorbell.
///
/// # Errors
/// As [`Server::start`].
pub fn build<N: NetQueue, D: BlockDevice, C: Clock, B: Doorbell>(
    cfg: &ServerConfig,
    shards: Vec<Shard<D, C>>,
    mut make_net: impl FnMut(usize) -> std::io::Result<N>,
    bells: Vec<B>,
) -> std::io::Result<Built<N, D, C, B>> {
    let n = shards.len();
    assert!(n > 0, "a server needs at least one shard");
    assert_eq!(bells.len(), n, "one doorbell per worker");
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if !(1..=2).contains(&cfg.replication_factor) {
        return Err(invalid(format!(
            "config key `replication_factor`: {} is not 1 or 2",
            cfg.replication_factor
        )));
    }
    if cfg.device_of.len() != n || cfg.fresh.len() != n {
        return Err(invalid(format!(
            "{n} shards but {} device assignments and {} fresh flags",
            cfg.device_of.len(),
            cfg.fresh.len()
        )));
    }
    let replica_of = replica::replica_ring(&cfg.device_of, cfg.replication_factor)
        .map_err(|e| invalid(format!("config key `replication_factor`: {e}")))?;
    let (pmap, mut sync_todo) = initial_roles(&replica_of, &cfg.fresh);
    let syncing: u64 = sync_todo.iter().map(|t| t.len() as u64).sum();
    // Make the queues and listen first: a port in use stops the start before anything runs.
    let addrs = listen_addrs(cfg, n);
    let mut nets = Vec::with_capacity(n);
    let mut bound = cfg.listen;
    for (k, (addr, opts)) in addrs.iter().enumerate() {
        let mut net = make_net(k)?;
        let mut addr = *addr;
        if cfg.listen_mode == ListenMode::Shared && k > 0 {
            addr = bound; // a port 0 became a real one: the others share it
        } else if cfg.listen_mode == ListenMode::PerCore && k > 0 && cfg.listen.port() == 0 {
            addr.set_port(bound.port() + k as u16);
        }
        let (_, at) = net.listen(addr, opts).map_err(|e| {
            let kind = if e.errno == Some(98) {
                std::io::ErrorKind::AddrInUse
            } else {
                std::io::ErrorKind::Other
            };
            std::io::Error::new(kind, e.to_string())
        })?;
        if k == 0 {
            bound = at;
        }
        nets.push(net);
    }
    let shard_nsup_ms = shards[0].config().nsup_period_ms;
    let shared = Arc::new(NodeShared {
        namespace: cfg.namespace.clone(),
        node_name: cfg.node_name.clone(),
        cluster_name: cfg.cluster_name.clone(),
        listen: bound,
        listen_mode: cfg.listen_mode,
        max_connections: cfg.max_connections,
        connections: AtomicUsize::new(0),
        refused_connections: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        workers: (0..n).map(|_| WorkerGauges::default()).collect(),
        truncate: RwLock::new(Arc::new(cfg.truncate.clone())),
        truncate_version: AtomicU64::new(0),
        truncate_path: cfg.truncate_path.clone(),
        latencies: stats::Latencies::new(n),
        replication_factor: cfg.replication_factor,
        pmap,
        device_failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
        fault_switches: cfg.fault_switches.clone(),
        device_of: cfg.device_of.clone(),
        sync_remaining: AtomicU64::new(syncing),
        rereplicated_records: AtomicU64::new(0),
        rereplication_read_errors: AtomicU64::new(0),
        partitions_failed_over: AtomicU64::new(0),
        rereplication_records_per_second: cfg.rereplication_records_per_second,
        storage: cfg.storage.clone(),
        // The idle limit and the expiry period start from where they are configured (the
        // connection limits, the shards' storage settings).
        settings: crate::config::LiveSettings::new(crate::config::Settings {
            proto_fd_idle_ms: cfg.conn_limits.idle_ms,
            nsup_period_ms: shard_nsup_ms,
            ..cfg.settings
        }),
    });
    if syncing > 0 {
        tracing::info!(partitions = syncing, "reconciling partition copies in the background");
    }
    let parkings: Vec<Arc<Parking<B>>> = bells.into_iter().map(|b| Arc::new(Parking::new(b))).collect();
    let rings = ring::mesh(&parkings, cfg.ring_capacity);
    let opts = ReactorOptions {
        busy_poll: cfg.busy_poll,
        conn_limits: cfg.conn_limits,
        record_cache_bytes: cfg.record_cache_bytes,
    };
    let mut reactors = Vec::with_capacity(n);
    for (i, ((shard, mut net), rings)) in shards.into_iter().zip(nets).zip(rings).enumerate() {
        let watch = |net: &mut N, fd: std::os::fd::RawFd| {
            net.watch_fd(fd).map_err(|e| std::io::Error::other(e.to_string()))
        };
        if net.can_sleep() {
            if let Some(fd) = shard.device().completion_fd() {
                watch(&mut net, fd.as_raw_fd())?;
            }
            if let Some(fd) = parkings[i].bell.fd() {
                watch(&mut net, fd)?;
            }
        }
        let todo = std::mem::take(&mut sync_todo[i]);
        reactors.push(Reactor::new(
            i,
            net,
            shard,
            rings,
            Arc::clone(&parkings[i]),
            Arc::clone(&shared),
            todo,
            opts.clone(),
        ));
    }
    Ok(Built { shared, reactors })
}

/// The roles at start and, per worker, the partitions it masters whose copies it must
/// reconcile. Per partition with home master
/// `m` and replica `r`: a fresh `m` with a non-fresh `r` swaps them (the survivor serves while
/// the fresh device is rebuilt: replica incomplete); a fresh `r` alone leaves an incomplete
/// replica; neither fresh keeps both complete but still reconciles them (cold-start repair);
/// both fresh is a new node: nothing to do.
fn initial_roles(replica_of: &[usize], fresh: &[bool]) -> (PartitionMap, Vec<Vec<crate::digest::PartitionId>>) {
    let n = replica_of.len();
    let map = PartitionMap::new(n, replica_of);
    let mut todo = vec![Vec::new(); n];
    for p in 0..crate::digest::N_PARTITIONS {
        let pid = crate::digest::PartitionId(p as u16);
        let m = p % n;
        let r = replica_of[m];
        if r == replica::NONE {
            continue;
        }
        let roles = match (fresh[m], fresh[r]) {
            (true, true) => continue,
            (true, false) => Roles {
                master: r,
                replica: m,
                complete: false,
            },
            (false, true) => Roles {
                master: m,
                replica: r,
                complete: false,
            },
            (false, false) => Roles {
                master: m,
                replica: r,
                complete: true,
            },
        };
        map.set(pid, roles);
        todo[roles.master].push(pid);
    }
    (map, todo)
}
