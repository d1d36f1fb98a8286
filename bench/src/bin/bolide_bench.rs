//! `bolide-bench`: load against any Aerospike-protocol endpoint through the official Rust client.
//!
//! Options that exist in Aerospike's `asbench` are spelled as there (`-h/--hosts`, `-p/--port`,
//! `-n/--namespace`, `-s/--set`, `-b/--bin`, `-K/--start-key`, `-k/--keys`, `-o/--object-spec`,
//! `-R/--random`, `-t/--duration`, `-w/--workload`, `-z/--threads`, `-g/--throughput`,
//! `-T/--timeout`, `--socket-timeout`, `--max-retries`, `-Y/--conn-pools-per-node`,
//! `-c/--async-max-commands`); the rest are this tool's own. `bolide-bench --help` lists them.
//!
//! `bolide-bench act ...` is the ACT-style device test instead (`bolide_bench::act`;
//! `bolide-bench act --help`): a first argument `act` selects it, every other command line is
//! the load generator's, unchanged.

use std::sync::Arc;

use aerospike::{Client, ClientPolicy, ReadPolicy, WritePolicy};
use bolide_bench::loadgen::keys::{KeyChooser, YCSB_ZIPFIAN_THETA};
use bolide_bench::loadgen::report::{machine_json, phase_json, phase_text, plot_data, PhaseResult};
use bolide_bench::loadgen::responder;
use bolide_bench::loadgen::run::{error_examples, load_phase, run_phase, PhaseConfig, RunSpec, Target};
use bolide_bench::loadgen::schedule::OpenLoopSchedule;
use bolide_bench::loadgen::workload::{bin_names, parse_workload, FixedValues, KeyDist, ObjectSpec, Workload};
use clap::Parser;
use rand::SeedableRng;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bolide-bench",
    disable_help_flag = true,
    about = "Load generator for Aerospike-protocol endpoints (Bolide or Aerospike), asbench-style options",
    after_help = "`bolide-bench act --help`: the ACT-style device test."
)]
struct Args {
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// Seed hosts, `host[:port][,host[:port]...]` (asbench `-h`).
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    hosts: String,
    /// Default port for hosts given without one.
    #[arg(short = 'p', long, default_value_t = 3000)]
    port: u16,
    /// Namespace.
    #[arg(short = 'n', long, default_value = "test")]
    namespace: String,
    /// Set name.
    #[arg(short = 's', long, default_value = "testset")]
    set: String,
    /// Base bin name: bins are `<bin>`, `<bin>_2`, `<bin>_3`, ….
    #[arg(short = 'b', long, default_value = "testbin")]
    bin: String,
    /// First integer key.
    #[arg(short = 'K', long, default_value_t = 0)]
    start_key: u64,
    /// Number of keys (records) the workload uses.
    #[arg(short = 'k', long, default_value_t = 1_000_000)]
    keys: u64,
    /// Record layout: comma-separated bins `I[1-8]`, `B<bytes>`, `S<len>`, `D`, `b`, each with an
    /// optional `<count>*` prefix; `B<min>-<max>` / `S<min>-<max>` for a ranged size. `B1024`: one
    /// 1 KiB blob bin.
    #[arg(short = 'o', long, default_value = "I")]
    object_spec: String,
    /// New random bin values for every write (default: the same values each time).
    #[arg(short = 'R', long)]
    random: bool,
    /// Workload: `I[,<pct>]` (insert pct % of the keys, then stop), `RU,<read%>`,
    /// `RUIM,<read%>,<update%>,<insert%>[,<rmw%>]`, or `YCSB-A` … `YCSB-F`.
    #[arg(short = 'w', long, default_value = "RU,50")]
    workload: String,
    /// Insert every key (`--keys` from `--start-key`) in a load phase before the run phase.
    #[arg(long)]
    load: bool,
    /// Key distribution of the run phase: uniform, zipfian or latest (default: the workload's;
    /// uniform for RU and RUIM; YCSB's for the presets).
    #[arg(long)]
    key_dist: Option<String>,
    /// Zipfian constant for zipfian and latest.
    #[arg(long, default_value_t = YCSB_ZIPFIAN_THETA)]
    zipfian_theta: f64,
    /// YCSB E: longest scan, records (each scan reads 1..=this consecutive keys one by one).
    #[arg(long, default_value_t = 100)]
    max_scan_records: u64,
    /// Measured seconds of the run phase (after the warm-up).
    #[arg(short = 't', long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start of the run phase left out of the results.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Open loop at this many operations per second, latency measured from each operation's
    /// intended send time; 0 = closed loop (as fast as the answers come).
    #[arg(short = 'g', long, default_value_t = 0.0)]
    throughput: f64,
    /// Requests in flight (one worker task and at most one connection each).
    #[arg(short = 'c', long, default_value_t = 50)]
    async_max_commands: usize,
    /// Threads of the client's tokio runtime (default: one per core).
    #[arg(short = 'z', long)]
    threads: Option<usize>,
    /// Connection pools per node (client policy `conn_pools_per_node`).
    #[arg(short = 'Y', long, default_value_t = 1)]
    conn_pools_per_node: u8,
    /// Connections per node at most (default: in-flight requests + 16).
    #[arg(long)]
    max_conns_per_node: Option<usize>,
    /// Total timeout of each command, ms; 0 = none.
    #[arg(short = 'T', long, default_value_t = 0)]
    timeout: u32,
    /// Timeout of the client's info (tend) commands and connection set-up, ms (client policy
    /// `timeout`; the client's default is 1000).
    #[arg(long, default_value_t = 5000)]
    info_timeout: u32,
    /// Socket idle timeout, ms.
    #[arg(long, default_value_t = 30_000)]
    socket_timeout: u32,
    /// Retries of a failed command (default 0, so that every failure is counted).
    #[arg(long, default_value_t = 0)]
    max_retries: usize,
    /// Measure the client's ceiling: ignore --hosts and run against a trivial in-process
    /// responder (canned answers, no storage) on this process's runtime.
    #[arg(long)]
    responder: bool,
    /// Also report this process's CPU time (the server's, when it runs on this machine).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the results (with the command and machine description) as JSON to this file.
    #[arg(long)]
    output_json: Option<std::path::PathBuf>,
    /// Draw the last phase as an SVG (latency CDF per operation kind, throughput per second).
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Seed of the random number generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// A checked configuration, or the reason it is refused (naming the option).
struct Plan {
    workload: Workload,
    spec: ObjectSpec,
    key_dist: KeyDist,
    hosts: String,
}

fn plan(a: &Args) -> Result<Plan, String> {
    let workload = parse_workload(&a.workload).map_err(|e| format!("-w/--workload: {e}"))?;
    let spec = ObjectSpec::parse(&a.object_spec).map_err(|e| format!("-o/--object-spec: {e}"))?;
    let key_dist = match (&a.key_dist, &workload) {
        (Some(s), _) => s.parse().map_err(|e| format!("--key-dist: {e}"))?,
        (None, Workload::Mix { default_key_dist, .. }) => *default_key_dist,
        (None, Workload::Insert { .. }) => KeyDist::Uniform,
    };
    if a.keys == 0 {
        return Err("-k/--keys: must be at least 1".into());
    }
    if a.start_key.checked_add(a.keys).is_none_or(|e| e > i64::MAX as u64 / 2) {
        return Err("-K/--start-key + -k/--keys: too large for integer keys".into());
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        return Err(format!("-t/--duration: must be > 0 seconds, got {}", a.duration));
    }
    if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
        return Err(format!("--warmup: must be >= 0 seconds, got {}", a.warmup));
    }
    if !(a.throughput >= 0.0 && a.throughput.is_finite()) {
        return Err(format!("-g/--throughput: must be >= 0 ops/s, got {}", a.throughput));
    }
    if !(1..=100_000).contains(&a.async_max_commands) {
        return Err(format!(
            "-c/--async-max-commands: must be 1..=100000, got {}",
            a.async_max_commands
        ));
    }
    if a.threads == Some(0) {
        return Err("-z/--threads: must be at least 1".into());
    }
    if a.max_conns_per_node.is_some_and(|m| m < a.async_max_commands) {
        return Err(format!(
            "--max-conns-per-node: must be at least -c/--async-max-commands ({}), or requests wait for connections",
            a.async_max_commands
        ));
    }
    if !(a.zipfian_theta > 0.0 && a.zipfian_theta < 1.0) {
        return Err(format!("--zipfian-theta: must be in (0, 1), got {}", a.zipfian_theta));
    }
    if a.plot
        .as_ref()
        .is_some_and(|p| p.extension().is_none_or(|e| !e.eq_ignore_ascii_case("svg")))
    {
        return Err("--plot: only SVG is supported; name the file *.svg".into());
    }
    if a.max_scan_records == 0 {
        return Err("--max-scan-records: must be at least 1".into());
    }
    let hosts = a
        .hosts
        .split(',')
        .map(str::trim)
        .map(|h| {
            if h.is_empty() {
                Err(format!("-h/--hosts: empty host in {:?}", a.hosts))
            } else if h.contains(':') {
                Ok(h.to_string())
            } else {
                Ok(format!("{h}:{}", a.port))
            }
        })
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    Ok(Plan {
        workload,
        spec,
        key_dist,
        hosts,
    })
}

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "act") {
        let act_argv = std::iter::once("bolide-bench act".into())
            .chain(argv[2..].iter().cloned())
            .collect();
        std::process::exit(bolide_bench::act_cli::main(act_argv));
    }
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let args = Args::parse();
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bolide-bench: {e}");
            std::process::exit(2);
        }
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(run(args, plan, threads, loadavg_at_start.trim()));
    std::process::exit(code);
}

async fn run(args: Args, plan: Plan, threads: usize, loadavg_at_start: &str) -> i32 {
    let in_flight = args.async_max_commands;
    let policy = ClientPolicy {
        max_conns_per_node: args.max_conns_per_node.unwrap_or(in_flight + 16),
        conn_pools_per_node: args.conn_pools_per_node,
        timeout: args.info_timeout,
        ..ClientPolicy::default()
    };
    let bins = bin_names(&args.bin, plan.spec.bins.len());
    let hosts = if args.responder {
        match responder::start(responder::Replies::new(&args.namespace, &plan.spec, &bins)).await {
            Ok(addr) => addr.to_string(),
            Err(e) => {
                eprintln!("bolide-bench: --responder: cannot listen on 127.0.0.1: {e}");
                return 1;
            }
        }
    } else {
        plan.hosts.clone()
    };
    let client = match Client::new(&policy, &hosts).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bolide-bench: cannot connect to {hosts}: {e}");
            return 1;
        }
    };
    let mut read_policy = ReadPolicy::default();
    let mut write_policy = WritePolicy::default();
    for bp in [&mut read_policy.base_policy, &mut write_policy.base_policy] {
        bp.total_timeout = args.timeout;
        bp.socket_timeout = args.socket_timeout;
        bp.max_retries = args.max_retries;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let target = Arc::new(Target {
        client,
        namespace: args.namespace.clone(),
        set: args.set.clone(),
        bin_names: bins,
        fixed: FixedValues::new(&plan.spec, &mut rng),
        spec: plan.spec.clone(),
        random_values: args.random,
        read_policy,
        write_policy,
    });
    let cfg = PhaseConfig {
        in_flight,
        seed: args.seed,
        progress: !args.quiet,
        server_pid: args.server_pid,
    };
    let mut phases: Vec<PhaseResult> = Vec::new();
    match &plan.workload {
        Workload::Insert { pct } => {
            let count = ((args.keys as f64 * pct / 100.0).round() as u64).max(1);
            phases.push(load_phase(target.clone(), &cfg, args.start_key, count).await);
        }
        Workload::Mix { mix, .. } => {
            if args.load {
                phases.push(load_phase(target.clone(), &cfg, args.start_key, args.keys).await);
            }
            let spec = RunSpec {
                mix: *mix,
                keys: KeyChooser::new(plan.key_dist, args.start_key, args.keys, args.zipfian_theta),
                start_key: args.start_key,
                loaded_keys: args.keys,
                warmup_s: args.warmup,
                duration_s: args.duration,
                schedule: (args.throughput > 0.0).then(|| OpenLoopSchedule::new(args.throughput)),
                max_scan_records: args.max_scan_records,
            };
            phases.push(run_phase(target.clone(), &cfg, &spec).await);
        }
    }
    for p in &phases {
        print!("{}", phase_text(p));
    }
    for (code, message) in error_examples() {
        println!("first error with code {code}: {message}");
    }
    let failed: u64 = phases.iter().flat_map(|p| p.totals.values()).map(|k| k.failed()).sum();
    if let Some(path) = &args.output_json {
        let (value_min, value_max) = plan.spec.value_bytes_range();
        let mut machine = machine_json();
        machine["loadavg_at_start"] = json!(loadavg_at_start);
        let out = json!({
            "bench": "bolide-bench",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "params": {
                "hosts": hosts, "target": if args.responder { "in-process responder (client ceiling)" } else { "hosts" }, "namespace": args.namespace, "set": args.set,
                "start_key": args.start_key, "keys": args.keys,
                "object_spec": args.object_spec, "record_value_bytes_min": value_min, "record_value_bytes_max": value_max,
                "random_values": args.random,
                "workload": args.workload, "key_dist": plan.key_dist.to_string(),
                "zipfian_theta": args.zipfian_theta, "load_phase": args.load,
                "duration_s": args.duration, "warmup_s": args.warmup,
                "throughput_target_per_s": (args.throughput > 0.0).then_some(args.throughput),
                "in_flight": in_flight, "client_threads": threads,
                "max_conns_per_node": args.max_conns_per_node.unwrap_or(in_flight + 16),
                "conn_pools_per_node": args.conn_pools_per_node,
                "total_timeout_ms": args.timeout, "info_timeout_ms": args.info_timeout, "socket_timeout_ms": args.socket_timeout,
                "max_retries": args.max_retries, "seed": args.seed, "server_pid": args.server_pid,
                "client": "aerospike (Rust) 3.0.0, async on tokio",
            },
            "machine": machine,
            "phases": phases.iter().map(phase_json).collect::<Vec<_>>(),
            "error_examples": error_examples()
                .into_iter()
                .map(|(c, m)| (c.to_string(), json!(m)))
                .collect::<serde_json::Map<_, _>>(),
        });
        let text = serde_json::to_string_pretty(&out).expect("json") + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("bolide-bench: --output-json {}: {e}", path.display());
            return 1;
        }
    }
    if let (Some(path), Some(last)) = (&args.plot, phases.last()) {
        let title = format!(
            "bolide-bench -w {} -o {} ({} phase, {:.0} ops/s)",
            args.workload,
            args.object_spec,
            last.name,
            last.ok_per_s()
        );
        if let Err(e) = bolide_bench::plot::write_plot(path, &plot_data(last, &title)) {
            eprintln!("bolide-bench: --plot: {e}");
            return 1;
        }
    }
    target.client.close().await.ok();
    if failed > 0 {
        3
    } else {
        0
    }
}
