//! `bolide`: the Bolide storage node.
//!
//! `bolide serve` opens one storage shard per worker core, each on its own io_uring device file
//! under the data directory, then serves the Aerospike wire protocol on `listen` (default
//! 127.0.0.1:3000, namespace `test`) with one pinned worker per shard, until SIGINT or SIGTERM;
//! then it shuts every shard down cleanly (flush, persist the index for a fast restart).

use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::server::{Server, ServerConfig};
use bolide_node::shard::{Region, Shard};
use bolide_node::truncate::TruncateTable;

/// The truncate table, in the data directory (docs/DISK_FORMAT.md, "Truncate table").
const TRUNCATE_FILE: &str = "truncate.toml";
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "bolide",
    version,
    about = "Bolide: an Aerospike-compatible flash storage node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the node (the default command).
    Serve(ServeArgs),
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// TOML config file; see docs/OPERATIONS.md.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The node's config file. Every key is optional.
#[derive(Debug, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct NodeConfig {
    /// Client address.
    listen: SocketAddr,
    /// The namespace served.
    namespace: String,
    /// Reported by the `cluster-name` info command.
    cluster_name: String,
    /// Client connections accepted at once.
    max_connections: usize,
    /// Directory holding one device file per shard (created sparse).
    data_dir: PathBuf,
    /// Size of each shard's device file, bytes.
    shard_file_bytes: u64,
    /// Worker cores (= shards); 0 means one per core of the machine.
    workers: usize,
    /// io_uring submission-queue entries per shard.
    queue_depth: u32,
    storage: StorageConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            namespace: "test".into(),
            cluster_name: "bolide".into(),
            max_connections: 10_000,
            data_dir: PathBuf::from("bolide-data"),
            shard_file_bytes: 2 << 30,
            workers: 0,
            queue_depth: 128,
            storage: StorageConfig::default(),
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<NodeConfig, String> {
    let cfg: NodeConfig = match path {
        None => NodeConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
            toml::from_str(&text).map_err(|e| format!("config {}: {e}", p.display()))?
        }
    };
    cfg.storage.validate().map_err(|e| format!("config [storage]: {e}"))?;
    if cfg.shard_file_bytes < 4 * cfg.storage.wblock_size_bytes as u64 {
        return Err(format!(
            "config key `shard_file_bytes`: {} holds fewer than 4 wblocks",
            cfg.shard_file_bytes
        ));
    }
    if !(1..=4096).contains(&cfg.queue_depth) {
        return Err(format!(
            "config key `queue_depth`: {} is outside 1..=4096",
            cfg.queue_depth
        ));
    }
    if cfg.namespace.is_empty() || cfg.namespace.len() > 31 {
        return Err(format!(
            "config key `namespace`: {:?} must be 1 to 31 bytes",
            cfg.namespace
        ));
    }
    if cfg.max_connections == 0 {
        return Err("config key `max_connections`: must be at least 1".into());
    }
    Ok(cfg)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let args = match cli.cmd {
        Some(Cmd::Serve(a)) => a,
        None => ServeArgs::default(),
    };
    if let Err(e) = serve(&args) {
        tracing::error!("{e}");
        std::process::exit(2);
    }
}

/// A node name that stays the same across restarts of the same data directory and address:
/// uppercase hex of 60 bits of a hash (spec §2.2: at most 19 characters).
fn node_name(cfg: &NodeConfig) -> String {
    let dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let d =
        bolide_node::digest::Digest::compute(dir.to_string_lossy().as_bytes(), 3, cfg.listen.to_string().as_bytes());
    let v = u64::from_le_bytes(d.0[..8].try_into().expect("8 bytes")) >> 4;
    format!("{:X}", v.max(1))
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let cfg = load_config(args.config.as_deref())?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let workers = if cfg.workers == 0 {
        cores.len().max(1)
    } else {
        cfg.workers
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", cfg.data_dir.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    // Open every shard (cold starts run in parallel).
    let opened: Vec<Result<Shard<UringDevice, SystemClock>, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let cfg = &cfg;
                s.spawn(move || open_shard(w, cfg))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("shard open panicked".into())))
            .collect()
    });
    let mut shards = opened.into_iter().collect::<Result<Vec<_>, _>>()?;
    // Truncated records stay gone: re-apply the saved cut-offs before serving (a cold start
    // finds their old copies in the wblocks).
    let truncate_path = cfg.data_dir.join(TRUNCATE_FILE);
    let truncate = TruncateTable::load(&truncate_path).map_err(|e| e.to_string())?;
    if !truncate.is_empty() {
        for (w, shard) in shards.iter_mut().enumerate() {
            let removed = shard.reapply_truncate_table(&truncate);
            tracing::info!(worker = w, removed, "truncate table re-applied");
        }
    }
    let server_cfg = ServerConfig {
        listen: cfg.listen,
        namespace: cfg.namespace.clone(),
        node_name: node_name(&cfg),
        cluster_name: cfg.cluster_name.clone(),
        max_connections: cfg.max_connections,
        ring_capacity: 4096,
        truncate,
        truncate_path: Some(truncate_path),
    };
    let pins = (0..workers)
        .map(|w| cores.get(w % cores.len().max(1)).copied())
        .collect();
    let server =
        Server::start(&server_cfg, shards, pins).map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(listen = %cfg.listen, namespace = %cfg.namespace, node = %server_cfg.node_name, workers, "serving");
    while !stop.load(Ordering::Relaxed) && !server.stopping() {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("stopping: flushing and persisting the index");
    let mut first_err = None;
    for (w, shard) in server.stop().into_iter().enumerate() {
        match shard.shutdown() {
            Ok((r, _)) => tracing::info!(
                worker = w,
                entries = r.index_entries,
                image = r.image_written,
                ms = r.elapsed_ms,
                "shard stopped cleanly"
            ),
            Err(e) => {
                tracing::error!(worker = w, "shutdown failed: {e}");
                first_err.get_or_insert(format!("worker {w}: shutdown: {e}"));
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn open_shard(w: usize, cfg: &NodeConfig) -> Result<Shard<UringDevice, SystemClock>, String> {
    let path = cfg.data_dir.join(format!("shard-{w}.dat"));
    // With commit_to_device a completed write must be durable, not just in the device's cache:
    // open O_DSYNC so every write completion means "on stable media".
    let opts = UringOptions {
        queue_depth: cfg.queue_depth,
        create_size_bytes: Some(cfg.shard_file_bytes),
        dsync: cfg.storage.commit_to_device,
        ..UringOptions::default()
    };
    let dev = UringDevice::open(&path, &opts).map_err(|e| format!("worker {w}: {e}"))?;
    let cap = bolide_drivers::BlockDevice::info(&dev).capacity_bytes;
    let (shard, report) = Shard::open(
        dev,
        SystemClock::new(),
        cfg.storage.clone(),
        w as u32,
        Region {
            offset_bytes: 0,
            len_bytes: cap,
        },
    )
    .map_err(|e| format!("worker {w}: {}: {e}", path.display()))?;
    tracing::info!(worker = w, path = %path.display(), mode = ?report.mode, records = report.index_entries, ms = report.elapsed_ms, "shard ready");
    Ok(shard)
}
