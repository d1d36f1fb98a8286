//! `bolide`: the Bolide storage node.
//!
//! `bolide serve` opens one storage shard per worker core, each on its own io_uring device file
//! under the data directory, pins each worker to its core and runs its poll loop until SIGINT or
//! SIGTERM, then shuts every shard down cleanly (flush, persist the index for a fast restart).
//!
//! The Aerospike wire-protocol listener (127.0.0.1:3000, namespace `test`) is not built yet
//! (issue "Thread-per-core Aerospike-compatible server"); today the node stores nothing a client
//! can reach, and `serve` says so at start-up.

use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::shard::{Region, Shard};
use clap::{Parser, Subcommand};
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
    Ok(cfg)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
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
    tracing::warn!(
        "the Aerospike protocol listener is not built yet: this node opens its storage and waits (stop with Ctrl-C)"
    );
    let mut handles = Vec::new();
    for w in 0..workers {
        let core = cores.get(w % cores.len().max(1)).copied();
        let path = cfg.data_dir.join(format!("shard-{w}.dat"));
        let storage = cfg.storage.clone();
        let (bytes, qd) = (cfg.shard_file_bytes, cfg.queue_depth);
        let stop = Arc::clone(&stop);
        let h = std::thread::Builder::new()
            .name(format!("bolide-w{w}"))
            .spawn(move || -> Result<(), String> {
                let r = run_worker(w, core, &path, storage, bytes, qd, &stop);
                if r.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                r
            })
            .map_err(|e| format!("cannot start worker {w}: {e}"))?;
        handles.push(h);
    }
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("a worker panicked".to_string());
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// One worker: pin, open the shard, poll until stopped, shut down cleanly.
fn run_worker(
    w: usize,
    core: Option<core_affinity::CoreId>,
    path: &Path,
    storage: StorageConfig,
    bytes: u64,
    qd: u32,
    stop: &AtomicBool,
) -> Result<(), String> {
    if let Some(c) = core {
        if !core_affinity::set_for_current(c) {
            tracing::warn!(worker = w, "could not pin to core {:?}", c.id);
        }
    }
    // With commit_to_device a completed write must be durable, not just in the device's cache:
    // open O_DSYNC so every write completion means "on stable media".
    let opts = UringOptions {
        queue_depth: qd,
        create_size_bytes: Some(bytes),
        dsync: storage.commit_to_device,
        ..UringOptions::default()
    };
    let dev = UringDevice::open(path, &opts).map_err(|e| format!("worker {w}: {e}"))?;
    let cap = bolide_drivers::BlockDevice::info(&dev).capacity_bytes;
    let (mut shard, report) = Shard::open(
        dev,
        SystemClock::new(),
        storage,
        w as u32,
        Region {
            offset_bytes: 0,
            len_bytes: cap,
        },
    )
    .map_err(|e| format!("worker {w}: {}: {e}", path.display()))?;
    tracing::info!(worker = w, path = %path.display(), mode = ?report.mode, records = report.index_entries, ms = report.elapsed_ms, "shard ready");
    let mut events = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        shard.poll(&mut events);
        events.clear();
        std::thread::sleep(Duration::from_millis(1));
    }
    let (report, _) = shard.shutdown().map_err(|e| format!("worker {w}: shutdown: {e}"))?;
    tracing::info!(
        worker = w,
        entries = report.index_entries,
        image = report.image_written,
        ms = report.elapsed_ms,
        "shard stopped cleanly"
    );
    Ok(())
}
