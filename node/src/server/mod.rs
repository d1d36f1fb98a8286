//! The Aerospike-protocol server: one [`worker`] per core drives its shard from client
//! connections; [`exec`] holds the single-record command semantics and [`codec`] the glue to
//! the wire codec in [`crate::proto`].

pub mod codec;
pub mod exec;
pub mod ring;
pub mod scan;
pub mod stats;
pub mod worker;

use crate::clock::Clock;
use crate::shard::Shard;
use crate::truncate::TruncateTable;
use bolide_drivers::BlockDevice;
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
}

impl NodeShared {
    /// Records in the namespace (index entries, tombstones included).
    pub fn objects(&self) -> u64 {
        self.sum(&self.index_entries)
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
    /// Starts one worker thread per shard (shard `i` owns the partitions `p % n == i`), each
    /// pinned to `cores[i]` when given.
    ///
    /// # Errors
    /// The listen socket could not be bound.
    pub fn start(
        cfg: &ServerConfig,
        shards: Vec<Shard<D, C>>,
        cores: Vec<Option<core_affinity::CoreId>>,
    ) -> std::io::Result<Server<D, C>> {
        let n = shards.len();
        assert!(n > 0, "a server needs at least one shard");
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
        });
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
            let w = worker::Worker::new(i, poll, listener, shard, rings, Arc::clone(&shared))?;
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
