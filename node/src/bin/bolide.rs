//! `bolide`: the Bolide storage node.
//!
//! `bolide serve` opens one storage shard per worker core, each on its own io_uring device file
//! under the data directory, then serves the Aerospike wire protocol on `listen` (default
//! 127.0.0.1:3000, namespace `test`) with one pinned worker per shard, until SIGINT or SIGTERM;
//! then it shuts every shard down cleanly (flush, persist the index for a fast restart).

use bolide_drivers::fault::{FaultSwitch, Faulty};
use bolide_drivers::any::AnyDevice;
use bolide_drivers::nvme::{NvmeDevice, NvmeOptions};
use bolide_drivers::uring::{UringDevice, UringOptions};
use bolide_node::clock::SystemClock;
use bolide_node::config::StorageConfig;
use bolide_node::datadir::{DeviceLock, DirLock};
use bolide_node::profile::HardwareProfile;
use bolide_drivers::net::NetDriver;
use bolide_node::server::{ListenMode, Server, ServerConfig};
use bolide_node::shard::{Format, OpenMode, OpenOptions, Region, Shard};

/// A shard on an io_uring device that the `fail-device` info command can fail (when
/// `fault_injection` is set).
type NodeShard = Shard<Faulty<AnyDevice>, SystemClock>;
use bolide_node::truncate::TruncateTable;

/// The truncate table, in the data directory (docs/DISK_FORMAT.md, "Truncate table").
const TRUNCATE_FILE: &str = "truncate.toml";
/// Workers whose device failed while the node ran with replication, so their copies are
/// stale until reconciled (docs/OPERATIONS.md, "Replication").
const STALE_FILE: &str = "stale-devices.toml";
use clap::{Parser, Subcommand};
use std::ffi::OsString;
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
    /// `backup` and `restore` (asbackup / asrestore flags), `backup-service`, `policy-run` and
    /// `catalogue` run the `bolide-backup` binary that is built next to this one; `probe
    /// DEVICE` runs `bolide-probe` (from bolide-bench).
    #[command(external_subcommand)]
    External(Vec<OsString>),
}

#[derive(clap::Args, Debug, Default)]
struct ServeArgs {
    /// TOML config file; see docs/OPERATIONS.md. Its keys override the profile's.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Hardware profile (hw-profiles/*.toml; see docs/HARDWARE.md): cores, devices, storage
    /// tuning. Without it: one worker per core, one file per shard under `data_dir`.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Format every shard region whose header is not a valid Bolide header (damaged, or another
    /// program's data), destroying what it holds. Without it only a provably blank region is
    /// formatted and anything else stops the start (docs/FAULT_MODEL.md).
    #[arg(long)]
    format_invalid: bool,
    /// Start even when a cold start finds damage it cannot attribute (a wblock or record header
    /// damaged past repair): what it held is dropped, and older copies of those records may be
    /// served. Logged at ERROR and counted. Prefer repairing from the replica copy.
    #[arg(long)]
    accept_data_loss: bool,
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
    /// Copies of every record: 1, or 2 (a second copy on another device; needs a profile with
    /// at least two devices).
    replication_factor: u8,
    /// Re-replication and cold-start repair: records copied per second per worker (0 =
    /// unlimited).
    rereplication_records_per_second: u32,
    /// Enables the `fail-device:worker=N` info command, which fails a worker's device as if it
    /// died (tests and drills only).
    fault_injection: bool,
    /// How workers present themselves: `"shared"` (one node on `listen`, the kernel spreads
    /// connections over the workers) or `"per-core"` (every core is a node: worker `k` on
    /// `listen`'s port + `k`; partition-aware clients send each command to its owner).
    listen_mode: String,
    /// Kernel-socket backend: `"io_uring"` or `"epoll"`; empty: the profile's `[network]
    /// driver`, else io_uring.
    network_driver: String,
    /// `"interrupt"` (sleep when idle) or `"busy"` (never sleep); empty: the profile's
    /// `[network] polling`.
    polling: String,
    /// Reply bytes a connection may leave unread before its requests stop being read.
    max_unsent_reply_bytes: usize,
    /// Close client connections idle this long, ms (Aerospike's `proto-fd-idle-ms`); 0 = never.
    proto_fd_idle_ms: u64,
    /// TTL of writes that ask for the namespace default, seconds (Aerospike's `default-ttl`);
    /// 0 = never expire. `set-config` changes it at run time.
    default_ttl_s: u32,
    /// Allow writes with a TTL while `nsup-period` is 0 (Aerospike's `allow-ttl-without-nsup`).
    allow_ttl_without_nsup: bool,
    /// Reads that ask for the default touch their record once the TTL left is within this share
    /// of its last write's TTL (Aerospike's `default-read-touch-ttl-pct`), 0..=100; 0 = never.
    default_read_touch_ttl_pct: u32,
    /// RAM for the record cache in front of the devices, bytes for the whole node (split
    /// evenly over the shards); 0 = no cache: every read not in a write buffer goes to the device.
    /// Default: 1 GiB, or an eighth of the machine's memory if that is less.
    record_cache_bytes: u64,
    storage: StorageConfig,
    /// `[[backup.policy]]` tables: read and checked by `bolide backup-service`, not by the node
    /// (docs/OPERATIONS.md, "Backup policies").
    backup: toml::Table,
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
            replication_factor: 1,
            rereplication_records_per_second: 50_000,
            fault_injection: false,
            listen_mode: "shared".into(),
            network_driver: String::new(),
            polling: String::new(),
            max_unsent_reply_bytes: 16 << 20,
            proto_fd_idle_ms: 0,
            default_ttl_s: 0,
            allow_ttl_without_nsup: false,
            default_read_touch_ttl_pct: 0,
            record_cache_bytes: (1u64 << 30).min(physical_memory_bytes().unwrap_or(8 << 30) / 8),
            storage: StorageConfig::default(),
            backup: toml::Table::new(),
        }
    }
}

/// Keys a config file may not set when a profile places the data.
const PROFILE_OWNED_KEYS: [&str; 4] = ["data_dir", "shard_file_bytes", "queue_depth", "workers"];

/// The embedded default, then the profile's storage tuning, then the config file's keys.
fn load_config(path: Option<&Path>, profile: Option<&HardwareProfile>) -> Result<NodeConfig, String> {
    let mut table = match path {
        None => toml::Table::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| format!("cannot read config {}: {e}", p.display()))?;
            text.parse::<toml::Table>()
                .map_err(|e| format!("config {}: {e}", p.display()))?
        }
    };
    if let Some(prof) = profile {
        if let Some(key) = PROFILE_OWNED_KEYS.iter().find(|k| table.contains_key(**k)) {
            return Err(format!(
                "config key `{key}`: devices and cores come from the profile {:?} (--profile); remove the key",
                prof.name
            ));
        }
        // The profile's storage section, under the config file's [storage] keys.
        let mut storage = toml::Table::try_from(&prof.storage).map_err(|e| format!("profile [storage]: {e}"))?;
        if let Some(toml::Value::Table(over)) = table.remove("storage") {
            storage.extend(over);
        }
        table.insert("storage".into(), toml::Value::Table(storage));
    }
    let cfg: NodeConfig = table.try_into().map_err(|e| match path {
        Some(p) => format!("config {}: {e}", p.display()),
        None => format!("config: {e}"),
    })?;
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
    if !(1..=2).contains(&cfg.replication_factor) {
        return Err(format!(
            "config key `replication_factor`: {} is not 1 or 2",
            cfg.replication_factor
        ));
    }
    if cfg.max_connections == 0 {
        return Err("config key `max_connections`: must be at least 1".into());
    }
    if ListenMode::parse(&cfg.listen_mode).is_none() {
        return Err(format!(
            "config key `listen_mode`: {:?} is not \"shared\" or \"per-core\"",
            cfg.listen_mode
        ));
    }
    if !cfg.network_driver.is_empty() && NetDriver::parse(&cfg.network_driver).is_none() {
        return Err(format!(
            "config key `network_driver`: {:?} is not \"io_uring\" or \"epoll\"",
            cfg.network_driver
        ));
    }
    if !matches!(cfg.polling.as_str(), "" | "interrupt" | "busy") {
        return Err(format!(
            "config key `polling`: {:?} is not \"interrupt\" or \"busy\"",
            cfg.polling
        ));
    }
    if cfg.default_ttl_s > bolide_node::config::MAX_DEFAULT_TTL_S {
        return Err(format!(
            "config key `default_ttl_s`: {} is over {} (10 years)",
            cfg.default_ttl_s,
            bolide_node::config::MAX_DEFAULT_TTL_S
        ));
    }
    if cfg.default_read_touch_ttl_pct > 100 {
        return Err(format!(
            "config key `default_read_touch_ttl_pct`: {} is over 100",
            cfg.default_read_touch_ttl_pct
        ));
    }
    if cfg.max_unsent_reply_bytes < 64 * 1024 {
        return Err(format!(
            "config key `max_unsent_reply_bytes`: {} is under 65536 (one scan chunk must fit)",
            cfg.max_unsent_reply_bytes
        ));
    }
    if cfg.record_cache_bytes > physical_memory_bytes().unwrap_or(u64::MAX) / 2 {
        return Err(format!(
            "config key `record_cache_bytes`: {} is over half of this machine's memory ({} bytes)",
            cfg.record_cache_bytes,
            physical_memory_bytes().unwrap_or(0)
        ));
    }
    Ok(cfg)
}

/// The machine's RAM, bytes (`/proc/meminfo`'s MemTotal), if it can be read.
fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The network backend, listener layout and polling mode: the config's keys, else the
/// profile's `[network]` section, else io_uring, interrupt-driven.
fn network_settings(cfg: &NodeConfig, profile: Option<&HardwareProfile>) -> Result<(NetDriver, ListenMode, bool), String> {
    use bolide_node::profile::{NicDriver, PollingMode};
    let driver = match (cfg.network_driver.as_str(), profile.map(|p| p.network.driver)) {
        ("", Some(NicDriver::Epoll)) => NetDriver::Epoll,
        ("", Some(NicDriver::Dpdk)) => NetDriver::Dpdk,
        ("", _) => NetDriver::Uring,
        (name, _) => NetDriver::parse(name).expect("validated"),
    };
    let mode = ListenMode::parse(&cfg.listen_mode).expect("validated");
    let busy = match (cfg.polling.as_str(), profile.map(|p| p.network.polling)) {
        ("busy", _) => true,
        ("interrupt", _) => false,
        (_, Some(PollingMode::Busy)) => true,
        _ => false,
    };
    if mode == ListenMode::PerCore && cfg.listen.port() == 0 {
        return Err("config key `listen`: per-core mode needs a fixed port (worker k listens on port + k)".into());
    }
    Ok((driver, mode, busy))
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
        Some(Cmd::External(argv)) => {
            let e = run_tool(&argv);
            tracing::error!("{e}");
            std::process::exit(2);
        }
        None => ServeArgs::default(),
    };
    if let Err(e) = serve(&args) {
        tracing::error!("{e}");
        std::process::exit(2);
    }
}

/// Runs `bolide-backup <backup|restore> ARGS...` or `bolide-probe ARGS...` (for `probe`) from
/// this executable's directory in place of this process (like `git <tool>`); returns only on
/// failure.
fn run_tool(argv: &[OsString]) -> String {
    use std::os::unix::process::CommandExt;
    let sub = argv
        .first()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `backup-service` is `bolide-backup service`.
    let service: Vec<OsString> = std::iter::once(OsString::from("service"))
        .chain(argv.iter().skip(1).cloned())
        .collect();
    let (tool, args, build) = match sub.as_str() {
        "backup" | "restore" | "catalogue" | "policy-run" => ("bolide-backup", argv, "-p bolide-backup"),
        "backup-service" => ("bolide-backup", &service[..], "-p bolide-backup"),
        "probe" => ("bolide-probe", &argv[1..], "-p bolide-bench --bin bolide-probe"),
        _ => return format!("unknown command `{sub}`: try `bolide --help`"),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p.with_file_name(tool),
        Err(e) => return format!("cannot locate this executable: {e}"),
    };
    if !exe.exists() {
        return format!(
            "`bolide {sub}` runs {}, which is not built: cargo build --release {build}",
            exe.display()
        );
    }
    let e = std::process::Command::new(&exe).args(args).exec();
    format!("cannot run {}: {e}", exe.display())
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

fn load_profile(path: &Path) -> Result<HardwareProfile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read profile {}: {e}", path.display()))?;
    let p = HardwareProfile::from_toml(&text).map_err(|e| format!("profile {}: {e}", path.display()))?;
    p.check_supported()
        .map_err(|e| format!("profile {}: {e}", path.display()))?;
    Ok(p)
}

/// Where one shard lives.
struct Placement {
    path: PathBuf,
    /// Create the file sparse at this size when missing (a shard file in a directory).
    create_size_bytes: Option<u64>,
    /// This shard's slot and the number of shards sharing the file or block device.
    slot: (u64, u64),
    queue_depth: u32,
    /// `nvme` devices: the controller's PCI address and the namespace id (`path` is unused).
    nvme: Option<(String, u32)>,
}

/// Shard `w` of `workers` on device `w % devices`: a file of its own in a directory, else an
/// equal region of a shared file or block device.
fn placements(cfg: &NodeConfig, profile: Option<&HardwareProfile>, workers: usize) -> Result<Vec<Placement>, String> {
    let Some(p) = profile else {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| format!("cannot create data directory {}: {e}", cfg.data_dir.display()))?;
        return Ok((0..workers)
            .map(|w| Placement {
                path: cfg.data_dir.join(format!("shard-{w}.dat")),
                create_size_bytes: Some(cfg.shard_file_bytes),
                slot: (0, 1),
                queue_depth: cfg.queue_depth,
                nvme: None,
            })
            .collect());
    };
    let n = p.devices.len();
    (0..workers)
        .map(|w| {
            let d = &p.devices[w % n];
            let sharing = ((workers - 1 - w % n) / n + 1) as u64;
            if let Some(pci) = &d.pci_address {
                // One queue pair per worker on the shared controller; equal regions of the
                // namespace, as for a block device.
                return Ok(Placement {
                    path: PathBuf::from(format!("nvme:{pci}")),
                    create_size_bytes: None,
                    slot: ((w / n) as u64, sharing),
                    queue_depth: d.queue_depth,
                    nvme: Some((pci.clone(), d.nsid.unwrap_or(1))),
                });
            }
            let path = d.path.clone().expect("validated: uring devices have a path");
            let is_dir = path.is_dir() || !path.exists();
            if is_dir {
                std::fs::create_dir_all(&path)
                    .map_err(|e| format!("cannot create device directory {}: {e}", path.display()))?;
                Ok(Placement {
                    path: path.join(format!("shard-{w}.dat")),
                    create_size_bytes: Some(d.shard_file_bytes),
                    slot: (0, 1),
                    queue_depth: d.queue_depth,
                    nvme: None,
                })
            } else {
                Ok(Placement {
                    path,
                    create_size_bytes: None,
                    slot: ((w / n) as u64, sharing),
                    queue_depth: d.queue_depth,
                    nvme: None,
                })
            }
        })
        .collect()
}

fn serve(args: &ServeArgs) -> Result<(), String> {
    let profile = args.profile.as_deref().map(load_profile).transpose()?;
    let cfg = load_config(args.config.as_deref(), profile.as_ref())?;
    let machine_cores = core_affinity::get_core_ids().unwrap_or_default();
    let cores: Vec<core_affinity::CoreId> = match profile.as_ref().map(|p| &p.cpu.cores) {
        Some(ids) if !ids.is_empty() => {
            if let Some(bad) = ids.iter().find(|&&c| !machine_cores.iter().any(|m| m.id == c)) {
                return Err(format!("profile key `cpu.cores`: core {bad} is not on this machine"));
            }
            ids.iter().map(|&id| core_affinity::CoreId { id }).collect()
        }
        _ => machine_cores,
    };
    let workers = match (&profile, cfg.workers) {
        (Some(p), _) => p.workers().unwrap_or(cores.len().max(1)),
        (None, 0) => cores.len().max(1),
        (None, w) => w,
    };
    if workers == 0 || workers > bolide_node::server::replica::MAX_WORKERS {
        return Err(format!(
            "{} workers: Bolide runs 1..={} (the partition map names a worker in one byte)",
            workers,
            bolide_node::server::replica::MAX_WORKERS
        ));
    }
    // One node per data directory and per device, for the life of this process: taken before
    // any shard file is created or opened.
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", cfg.data_dir.display()))?;
    let _locks = lock_paths(&cfg, profile.as_ref())?;
    let places = placements(&cfg, profile.as_ref(), workers)?;
    check_shard_files(&places)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot install signal handler: {e}"))?;
    }
    // Which device each worker uses: workers on one device never hold each other's copies.
    let device_of: Vec<usize> = match &profile {
        Some(p) => (0..workers).map(|w| w % p.devices.len()).collect(),
        None => vec![0; workers],
    };
    if cfg.replication_factor == 2 && device_of.iter().all(|&d| d == device_of[0]) {
        return Err(format!(
            "config key `replication_factor`: 2 needs at least two devices, and {} has one;              use a profile (--profile) with two [[device]] entries, or replication_factor = 1",
            match &profile {
                Some(p) => format!("profile {:?}", p.name),
                None => "the default layout (one data_dir)".to_string(),
            }
        ));
    }
    let switches: Vec<FaultSwitch> = (0..workers).map(|_| FaultSwitch::new()).collect();
    let open_opts = OpenOptions {
        format: if args.format_invalid { Format::IfInvalid } else { Format::IfBlank },
        accept_damage: args.accept_data_loss,
    };
    // Open every shard (cold starts run in parallel).
    let opened: Vec<Result<(NodeShard, bool), String>> = std::thread::scope(|s| {
        let hs: Vec<_> = places
            .iter()
            .zip(&switches)
            .enumerate()
            .map(|(w, (place, sw))| {
                let cfg = &cfg;
                s.spawn(move || open_shard(w, place, cfg, sw.clone(), open_opts))
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("shard open panicked".into())))
            .collect()
    });
    let (mut shards, mut fresh): (Vec<NodeShard>, Vec<bool>) =
        opened.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().unzip();
    // A device that failed in an earlier run and was not replaced holds stale copies: treat it
    // as blank for roles (its partitions are served by the other copy until reconciled).
    let stale_path = cfg.data_dir.join(STALE_FILE);
    let mut stale = load_stale(&stale_path)?;
    if cfg.replication_factor == 2 {
        for &w in &stale {
            if let Some(f) = fresh.get_mut(w) {
                if !*f {
                    tracing::warn!(
                        worker = w,
                        "device failed in an earlier run: its copies are rebuilt before it serves"
                    );
                }
                *f = true;
            }
        }
    }
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
    let (network, listen_mode, busy_poll) = network_settings(&cfg, profile.as_ref())?;
    if listen_mode == ListenMode::PerCore && u32::from(cfg.listen.port()) + workers as u32 > 65_536 {
        return Err(format!(
            "config key `listen`: per-core mode needs ports {}..{} and they run past 65535",
            cfg.listen.port(),
            u32::from(cfg.listen.port()) + workers as u32
        ));
    }
    let server_cfg = ServerConfig {
        listen: cfg.listen,
        listen_mode,
        network,
        dpdk: match profile.as_ref() {
            Some(p) if network == NetDriver::Dpdk => p.network.dpdk_config().map_err(|e| e.to_string())?,
            _ => None,
        },
        busy_poll,
        conn_limits: bolide_node::server::conn::ConnLimits {
            max_unsent_bytes: cfg.max_unsent_reply_bytes,
            idle_ms: cfg.proto_fd_idle_ms,
        },
        namespace: cfg.namespace.clone(),
        node_name: node_name(&cfg),
        cluster_name: cfg.cluster_name.clone(),
        max_connections: cfg.max_connections,
        ring_capacity: 4096,
        truncate,
        truncate_path: Some(truncate_path),
        replication_factor: cfg.replication_factor,
        device_of,
        fresh,
        fault_switches: if cfg.fault_injection { switches } else { Vec::new() },
        rereplication_records_per_second: cfg.rereplication_records_per_second,
        storage: cfg.storage.clone(),
        settings: bolide_node::config::Settings {
            default_ttl_s: cfg.default_ttl_s,
            nsup_period_ms: cfg.storage.nsup_period_ms,
            allow_ttl_without_nsup: cfg.allow_ttl_without_nsup,
            default_read_touch_ttl_pct: cfg.default_read_touch_ttl_pct,
            proto_fd_idle_ms: cfg.proto_fd_idle_ms,
            query_max_done: 100,
        },
        record_cache_bytes: cfg.record_cache_bytes / workers.max(1) as u64,
    };
    let pins = (0..workers)
        .map(|w| cores.get(w % cores.len().max(1)).copied())
        .collect();
    let server = Server::start(&server_cfg, shards, pins).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => e.to_string(),
        _ if e.to_string().starts_with("cannot listen") => e.to_string(),
        _ => format!("cannot listen on {}: {e}", cfg.listen),
    })?;
    tracing::info!(version = bolide_node::proto::info::EDITION, build = bolide_node::proto::info::DEFAULT_BUILD, listen = %server.shared.listen, namespace = %cfg.namespace, node = %server_cfg.node_name, workers, replication_factor = cfg.replication_factor, network = ?network, listen_mode = ?listen_mode, busy_poll, "serving");
    while !stop.load(Ordering::Relaxed) && !server.stopping() {
        std::thread::sleep(Duration::from_millis(50));
        if cfg.replication_factor == 2 {
            track_stale(&server.shared, &mut stale, &stale_path);
        }
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

/// Locks the data directory and every device of the profile (a directory by its lock file, a
/// file or block device by itself); the locks live as long as the returned values.
fn lock_paths(cfg: &NodeConfig, profile: Option<&HardwareProfile>) -> Result<Vec<Box<dyn std::any::Any>>, String> {
    let mut locks: Vec<Box<dyn std::any::Any>> =
        vec![Box::new(DirLock::acquire(&cfg.data_dir).map_err(|e| e.to_string())?)];
    let mut seen = vec![std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone())];
    for d in profile.map(|p| p.devices.as_slice()).unwrap_or_default() {
        let Some(path) = &d.path else { continue };
        if path.is_dir() || !path.exists() {
            std::fs::create_dir_all(path)
                .map_err(|e| format!("cannot create device directory {}: {e}", path.display()))?;
        }
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        if seen.contains(&canon) {
            continue;
        }
        seen.push(canon);
        if path.is_dir() {
            locks.push(Box::new(DirLock::acquire(path).map_err(|e| e.to_string())?));
        } else {
            locks.push(Box::new(DeviceLock::acquire(path).map_err(|e| e.to_string())?));
        }
    }
    Ok(locks)
}

/// Before any file is created or changed: every shard file that exists must have exactly the
/// configured size (a shorter one was truncated, a longer or shorter setting would grow or
/// ignore data), and in a directory either every shard file of this worker count exists or none
/// does (a lost file is not formatted blank, and a changed worker count would misplace every
/// partition). Files that are missing in a fresh directory are created by the device open.
fn check_shard_files(places: &[Placement]) -> Result<(), String> {
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for p in places {
        let Some(want) = p.create_size_bytes else { continue };
        match std::fs::metadata(&p.path) {
            Ok(m) if !m.is_file() => return Err(format!("shard file {} is not a regular file", p.path.display())),
            Ok(m) if m.len() != want => {
                return Err(format!(
                    "shard file {} is {} bytes, but shard_file_bytes is {want}: the file was truncated or the setting                      changed; refusing to start (nothing was changed; restore the file, or set shard_file_bytes back)",
                    p.path.display(),
                    m.len()
                ))
            }
            Ok(_) => present.push(&p.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(&p.path),
            Err(e) => return Err(format!("cannot stat shard file {}: {e}", p.path.display())),
        }
    }
    // Within one directory (a device): all or none. A whole device directory that is new is a
    // replaced device, formatted blank (and refilled by re-replication with replication_factor 2).
    let lost = missing.iter().find_map(|m| present.iter().find(|p| p.parent() == m.parent()).map(|p| (p, m)));
    if let Some((have, lost)) = lost {
        return Err(format!(
            "shard file {} is missing while {} exists: a lost shard file is not formatted blank (restore it,              or move the whole data directory away to start empty)",
            lost.display(),
            have.display()
        ));
    }
    // A shard file beyond this worker count: the count changed under existing data.
    let dirs: Vec<&Path> = places
        .iter()
        .filter(|p| p.create_size_bytes.is_some())
        .filter_map(|p| p.path.parent())
        .collect();
    for dir in dirs.iter().copied().collect::<std::collections::BTreeSet<_>>() {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let name = name.to_string_lossy();
            let is_shard = name.strip_prefix("shard-").and_then(|r| r.strip_suffix(".dat")).is_some_and(|n| n.parse::<usize>().is_ok());
            if is_shard && !places.iter().any(|p| p.path == ent.path()) {
                return Err(format!(
                    "{} belongs to no worker of this configuration: the worker count changed under existing data                      (partitions are owned by partition % workers); start with the earlier worker count",
                    ent.path().display()
                ));
            }
        }
    }
    Ok(())
}

/// Opens worker `w`'s shard; returns it and whether it was blank (formatted now: a new or
/// replaced device).
fn open_shard(
    w: usize,
    place: &Placement,
    cfg: &NodeConfig,
    switch: FaultSwitch,
    open_opts: OpenOptions,
) -> Result<(NodeShard, bool), String> {
    let path = &place.path;
    // With commit_to_device a completed write must be durable, not just in the device's cache:
    // open O_DSYNC so every write completion means "on stable media".
    let opts = UringOptions {
        queue_depth: place.queue_depth,
        // Only a missing file is created; an existing one is never resized (checked before).
        create_size_bytes: place.create_size_bytes.filter(|_| !path.exists()),
        dsync: cfg.storage.commit_to_device,
        ..UringOptions::default()
    };
    let dev = match &place.nvme {
        // With commit_to_device every write carries FUA, so its completion means "on stable media".
        Some((pci, nsid)) => AnyDevice::Nvme(
            NvmeDevice::open(
                pci,
                &NvmeOptions {
                    nsid: *nsid,
                    queue_depth: place.queue_depth,
                    fua: cfg.storage.commit_to_device,
                    ..NvmeOptions::default()
                },
            )
            .map_err(|e| format!("worker {w}: {e}"))?,
        ),
        None => AnyDevice::Uring(UringDevice::open(path, &opts).map_err(|e| format!("worker {w}: {e}"))?),
    };
    let dev = Faulty::new(dev, switch);
    let cap = bolide_drivers::BlockDevice::info(&dev).capacity_bytes;
    // Shards sharing a file or block device get equal regions, whole wblocks each.
    let (slot, sharing) = place.slot;
    let ws = u64::from(cfg.storage.wblock_size_bytes);
    let len_bytes = if sharing == 1 { cap } else { cap / sharing / ws * ws };
    let region = Region {
        offset_bytes: slot * len_bytes,
        len_bytes,
    };
    let (shard, report) = Shard::open_with(dev, SystemClock::new(), cfg.storage.clone(), w as u32, region, open_opts)
        .map_err(|e| format!("worker {w}: {}: {e}", path.display()))?;
    tracing::info!(worker = w, path = %path.display(), offset = region.offset_bytes, mode = ?report.mode, records = report.index_entries, ms = report.elapsed_ms, "shard ready");
    Ok((shard, report.mode == OpenMode::Formatted))
}

/// The workers listed in the stale-devices file (empty when there is none).
fn load_stale(path: &Path) -> Result<Vec<usize>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stale {
        workers: Vec<usize>,
    }
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str::<Stale>(&text)
            .map(|s| s.workers)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps the stale-devices file in step with the running node: a worker whose device fails is
/// added (written and fsynced at once); once every partition has two complete copies and no
/// device is failed, the file is removed.
fn track_stale(shared: &bolide_node::server::NodeShared, stale: &mut Vec<usize>, path: &Path) {
    let mut changed = false;
    for (w, f) in shared.device_failed.iter().enumerate() {
        if f.load(Ordering::Relaxed) && !stale.contains(&w) {
            stale.push(w);
            changed = true;
        }
    }
    let healed = !stale.is_empty()
        && shared.failed_devices() == 0
        && shared.sync_remaining.load(Ordering::Relaxed) == 0
        && shared.pmap.unreplicated() == 0;
    if healed {
        stale.clear();
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!("every partition has two complete copies again"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("cannot remove {}: {e}", path.display()),
        }
        return;
    }
    if changed {
        let text =
            format!("# Workers whose device failed: their copies are stale until reconciled.\nworkers = {stale:?}\n");
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = path.with_extension("tmp");
        let res = std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = res {
            tracing::error!("cannot record the failed device in {}: {e}", path.display());
        }
    }
}
