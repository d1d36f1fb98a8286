//! The Aerospike-protocol server: one [`worker`] per core drives its shard from client
//! connections; [`exec`] holds the single-record command semantics and [`codec`] the glue to
//! the wire codec in [`crate::proto`].

pub mod codec;
pub mod exec;
pub mod replica;
pub mod ring;
pub mod scan;
pub mod stats;
pub mod sync;
pub mod worker;

use crate::clock::Clock;
use crate::shard::Shard;
use crate::truncate::TruncateTable;
use bolide_drivers::fault::FaultSwitch;
use bolide_drivers::BlockDevice;
use replica::{PartitionMap, Roles};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};

/// Node-wide settings of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where clients connect (every worker listens on it with `SO_REUSEPORT`).
    pub listen: SocketAddr,
    /// The one namespace served.
    pub namespace: String,
    /// Node name reported by `node` (uppercase hex, at most 19 characters, spec §2.2).
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
}

impl ServerConfig {
    /// A single-copy server on `listen` for `namespace` with default settings (tests, tools).
    pub fn new(listen: SocketAddr, namespace: &str, workers: usize) -> ServerConfig {
        ServerConfig {
            listen,
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
        }
    }
}

/// What every worker shares: settings, gauges and the stop flag. Only atomics: nothing here is
/// locked on the data path.
pub struct NodeShared {
    pub namespace: String,
    pub node_name: String,
    pub cluster_name: String,
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub connections: AtomicUsize,
    pub stop: AtomicBool,
    /// Per worker: index entries, live record bytes and device capacity, published each turn.
    pub index_entries: Vec<AtomicU64>,
    pub live_bytes: Vec<AtomicU64>,
    pub capacity_bytes: Vec<AtomicU64>,
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
    /// Per worker: index entries of the partitions it masters (replication on; published
    /// every [`worker::MASTER_COUNT_PERIOD`]).
    pub master_entries: Vec<AtomicU64>,
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
}

impl NodeShared {
    /// Records in the namespace (index entries, tombstones included), each counted once: with
    /// replication, the master copies only.
    pub fn objects(&self) -> u64 {
        if self.replication_factor > 1 {
            self.sum(&self.master_entries)
        } else {
            self.sum(&self.index_entries)
        }
    }

    /// Workers whose device failed.
    pub fn failed_devices(&self) -> usize {
        self.device_failed
            .iter()
            .filter(|f| f.load(std::sync::atomic::Ordering::Relaxed))
            .count()
    }

    pub fn sum(&self, v: &[AtomicU64]) -> u64 {
        v.iter().map(|a| a.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }
}

/// A running server: join it to get the shards back for a clean shutdown.
pub struct Server<D: BlockDevice + 'static, C: Clock + 'static> {
    pub shared: Arc<NodeShared>,
    handles: Vec<std::thread::JoinHandle<Shard<D, C>>>,
}

impl<D: BlockDevice + 'static, C: Clock + 'static> Server<D, C> {
    /// Starts one worker thread per shard (shard `i` masters the partitions `p % n == i`), each
    /// pinned to `cores[i]` when given. With replication factor 2, a partition whose master
    /// shard is fresh while its replica's is not is served by the replica until re-replication
    /// has rebuilt the master's copy (the roles stay swapped until the next start); every other
    /// partition with a replica is reconciled in the background ([`sync`]).
    ///
    /// # Errors
    /// The listen socket could not be bound, or the replication settings are impossible
    /// (`InvalidInput`: factor 2 on one device).
    pub fn start(
        cfg: &ServerConfig,
        shards: Vec<Shard<D, C>>,
        cores: Vec<Option<core_affinity::CoreId>>,
    ) -> std::io::Result<Server<D, C>> {
        let n = shards.len();
        assert!(n > 0, "a server needs at least one shard");
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
        let shared = Arc::new(NodeShared {
            namespace: cfg.namespace.clone(),
            node_name: cfg.node_name.clone(),
            cluster_name: cfg.cluster_name.clone(),
            listen: cfg.listen,
            max_connections: cfg.max_connections,
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            index_entries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            live_bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            capacity_bytes: (0..n).map(|_| AtomicU64::new(0)).collect(),
            truncate: RwLock::new(Arc::new(cfg.truncate.clone())),
            truncate_version: AtomicU64::new(0),
            truncate_path: cfg.truncate_path.clone(),
            latencies: stats::Latencies::new(n),
            replication_factor: cfg.replication_factor,
            pmap,
            device_failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            master_entries: (0..n).map(|_| AtomicU64::new(0)).collect(),
            fault_switches: cfg.fault_switches.clone(),
            device_of: cfg.device_of.clone(),
            sync_remaining: AtomicU64::new(syncing),
            rereplicated_records: AtomicU64::new(0),
            rereplication_read_errors: AtomicU64::new(0),
            partitions_failed_over: AtomicU64::new(0),
            rereplication_records_per_second: cfg.rereplication_records_per_second,
        });
        if syncing > 0 {
            tracing::info!(partitions = syncing, "reconciling partition copies in the background");
        }
        let mut polls = Vec::with_capacity(n);
        let mut wakers = Vec::with_capacity(n);
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            wakers.push(Arc::new(mio::Waker::new(poll.registry(), worker::WAKER)?));
            polls.push(poll);
            listeners.push(listen_socket(cfg.listen)?);
        }
        let rings = ring::mesh(&wakers, cfg.ring_capacity);
        let mut handles = Vec::with_capacity(n);
        for (i, (((shard, poll), listener), rings)) in
            shards.into_iter().zip(polls).zip(listeners).zip(rings).enumerate()
        {
            let todo = std::mem::take(&mut sync_todo[i]);
            let w = worker::Worker::new(i, poll, listener, shard, rings, Arc::clone(&shared), todo)?;
            let core = cores.get(i).copied().flatten();
            let h = std::thread::Builder::new()
                .name(format!("bolide-w{i}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if !core_affinity::set_for_current(c) {
                            tracing::warn!(worker = i, "could not pin to core {}", c.id);
                        }
                    }
                    w.run()
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

/// A listening socket with `SO_REUSEPORT`, so every worker accepts on the same address and the
/// kernel spreads connections across them.
fn listen_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
