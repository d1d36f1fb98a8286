//! Backup policies: `[[backup.policy]]` in the node's config, run by `bolide backup-service`
//! (`bolide-backup service`), a process of its own next to the node (why not inside the node:
//! `docs/ARCHITECTURE.md`, "Backups run beside the node").
//!
//! A policy names a namespace, a target root (a local directory or an object-store prefix), a
//! cron schedule for incremental runs and one for full runs, and a retention in chains. Every
//! run goes to `<target>/<run id>/` and into the root's catalogue ([`crate::catalogue`]).
//! Events start runs too: `data_used_pct` of the namespace crossing a threshold (polled), and a
//! run on demand (`bolide-backup policy-run`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;

use crate::backup::{self, BackupArgs};
use crate::catalogue::{self, Catalogue, Kind, Run};
use crate::target::{ObjectStoreArgs, Target};

fn default_overlap_secs() -> u64 {
    60
}
fn default_parallel() -> u16 {
    4
}
fn default_poll_secs() -> u64 {
    10
}

/// One `[[backup.policy]]` table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy's name (log lines, `policy-run --policy NAME`).
    pub name: String,
    pub namespace: String,
    /// The target root: a local directory, `s3://bucket/prefix`, `gs://...`, `az://...`.
    pub target: String,
    /// Cron schedule (`sec min hour day-of-month month day-of-week`, seconds optional; UTC) of
    /// incremental runs; a run when the chain has no full yet is a full.
    pub schedule: Option<String>,
    /// Cron schedule of full runs (UTC). A time due on both schedules runs a full.
    pub full_schedule: Option<String>,
    /// An incremental takes records last updated from the previous run's start less this many
    /// seconds (the clock skew between this host and the node, and LUT's 1 s resolution in
    /// `--modified-after`). Default 60.
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// Scans at once (`--parallel`). Default 4.
    #[serde(default = "default_parallel")]
    pub parallel: u16,
    /// `zstd` or none.
    pub compress: Option<String>,
    /// Encrypt with AES-256-GCM under this key file.
    pub encryption_key_file: Option<PathBuf>,
    /// Keep the newest this many chains (a full and its incrementals); 0 (default): keep all.
    #[serde(default)]
    pub keep_chains: usize,
    /// Run an incremental when the namespace's `data_used_pct` rises to this or more (once per
    /// crossing).
    pub data_used_pct: Option<u32>,
    /// Seconds between `data_used_pct` polls. Default 10.
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// Rotate files at this many MiB. Default 250.
    pub file_limit_mib: Option<u64>,
    pub s3_endpoint_override: Option<String>,
    pub s3_region: Option<String>,
}

/// The `[backup]` part of the node's config; every other key of the file is the node's.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct BackupSection {
    #[serde(default)]
    pub policy: Vec<Policy>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
struct ConfigFile {
    #[serde(default)]
    backup: BackupSection,
    listen: Option<String>,
}

/// The policies of a node config file and the node's `listen` address.
///
/// # Errors
/// The file cannot be read, is not TOML, a policy has a bad or missing key, a bad cron
/// expression, or two policies share a name.
pub fn load_policies(path: &std::path::Path) -> Result<(Vec<Policy>, Option<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let cfg: ConfigFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names = std::collections::HashSet::new();
    for p in &cfg.backup.policy {
        if !names.insert(p.name.clone()) {
            return Err(format!("{}: two backup policies named {:?}", path.display(), p.name));
        }
        for s in p.schedule.iter().chain(&p.full_schedule) {
            cron(s).map_err(|e| format!("{}: policy {:?}: {e}", path.display(), p.name))?;
        }
        if p.parallel == 0 {
            return Err(format!("{}: policy {:?}: parallel must be at least 1", path.display(), p.name));
        }
    }
    Ok((cfg.backup.policy, cfg.listen))
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn cron(s: &str) -> Result<croner::Cron, String> {
    croner::Cron::new(s)
        .with_seconds_optional()
        .parse()
        .map_err(|e| format!("bad cron schedule {s:?}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The first time after `after_ms` that `c` fires (Unix ms); `None` when it never does.
pub fn next_fire(c: &croner::Cron, after_ms: i64) -> Option<i64> {
    c.find_next_occurrence(&utc(after_ms), false).ok().map(|t| t.timestamp_millis())
}

impl Policy {
    fn object_args(&self) -> ObjectStoreArgs {
        ObjectStoreArgs {
            s3_endpoint_override: self.s3_endpoint_override.clone(),
            s3_region: self.s3_region.clone(),
            ..ObjectStoreArgs::default()
        }
    }

    pub fn root(&self) -> Result<Target, String> {
        Target::parse(&self.target, &self.object_args())
    }
}

#[derive(Parser)]
#[command(disable_help_flag = true)]
struct BackupArgv {
    #[command(flatten)]
    args: BackupArgs,
}

/// Runs one backup of `policy` against the node at `host` (`host:port`): `want` a full, or an
/// incremental chained to the newest successful full (a full when there is none), into
/// `<target>/<run id>/`; records it in the catalogue (also when it fails), then applies the
/// retention. Returns the run.
///
/// # Errors
/// The catalogue cannot be read or written (a failed backup is a `Run` with its error, not an
/// `Err`).
pub async fn run_once(policy: &Policy, host: &str, want: Kind) -> Result<Run, String> {
    let root = policy.root()?;
    let cat = Catalogue::load(&root)?;
    let started_ms = now_ms();
    let (kind, after, full) = match (want, cat.next_incremental(policy.overlap_secs)) {
        (Kind::Incremental, Some((full, after))) => (Kind::Incremental, Some(after), Some(full)),
        _ => (Kind::Full, None, None),
    };
    let id = catalogue::run_id(started_ms, kind);
    let dir = root.child(&id);
    let mut argv: Vec<String> = ["backup", "-h", host, "-n", &policy.namespace, "-d"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    argv.push(dir.to_string());
    argv.extend(["-w".into(), policy.parallel.to_string(), "--progress-secs".into(), "0".into()]);
    if let Some(c) = &policy.compress {
        argv.extend(["--compress".into(), c.clone()]);
    }
    if let Some(k) = &policy.encryption_key_file {
        argv.extend(["--encrypt".into(), "aes256".into(), "--encryption-key-file".into()]);
        argv.push(k.display().to_string());
    }
    if let Some(f) = policy.file_limit_mib {
        argv.extend(["--file-limit".into(), f.to_string()]);
    }
    let mut args = BackupArgv::try_parse_from(&argv)
        .map_err(|e| format!("policy {:?}: {e}", policy.name))?
        .args;
    args.object = policy.object_args();
    args.modified_after = after;
    let outcome = backup::run(args).await;
    let finished_ms = now_ms();
    let run = Run {
        full: full.unwrap_or_else(|| id.clone()),
        id,
        kind,
        after,
        started_ms,
        finished_ms,
        records: outcome.as_ref().map_or(0, |s| s.records),
        deletes: outcome.as_ref().map_or(0, |s| s.deletes.unwrap_or(0)),
        bytes: outcome.as_ref().map_or(0, |s| s.bytes),
        result: match &outcome {
            Ok(_) => "ok".into(),
            Err(e) => format!("failed: {}", e.replace('\n', "; ")),
        },
    };
    // Re-read: a run on demand may have finished meanwhile.
    let mut cat = Catalogue::load(&root)?;
    cat.runs.push(run.clone());
    cat.save(&root)?;
    if run.ok() && policy.keep_chains > 0 {
        prune(&root, policy.keep_chains)?;
    }
    Ok(run)
}

/// Retention: drops every chain but the newest `keep_chains` from the catalogue (saved first,
/// so it never names deleted files), then deletes their files. Returns the ids deleted.
///
/// # Errors
/// The catalogue or the files cannot be read, written or deleted.
pub fn prune(root: &Target, keep_chains: usize) -> Result<Vec<String>, String> {
    let mut cat = Catalogue::load(root)?;
    let gone: Vec<String> = cat.expired(keep_chains).iter().map(|r| r.id.clone()).collect();
    if gone.is_empty() {
        return Ok(gone);
    }
    cat.runs.retain(|r| !gone.contains(&r.id));
    cat.save(root)?;
    for id in &gone {
        root.child(id).remove_all()?;
    }
    Ok(gone)
}

#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// The node's config file (its `[[backup.policy]]` tables and `listen`).
    #[arg(long)]
    pub config: PathBuf,
    /// The node to back up (`host:port`). Default: the config's `listen`, else 127.0.0.1:3000.
    #[arg(long)]
    pub host: Option<String>,
}

/// Where a service keeps each policy: its schedules and event state.
struct Scheduled {
    policy: Policy,
    incr: Option<croner::Cron>,
    full: Option<croner::Cron>,
    next_incr: Option<i64>,
    next_full: Option<i64>,
    next_poll_ms: i64,
    above_threshold: bool,
}

/// The namespace's `data_used_pct` (info `namespace/<ns>`, the highest over the cluster's
/// nodes); `None` when no node reports it.
pub async fn data_used_pct(client: &aerospike::Client, namespace: &str) -> Option<u32> {
    let cmd = format!("namespace/{namespace}");
    let mut best = None;
    for node in client.nodes() {
        let info = node.info(&aerospike::AdminPolicy::default(), &[cmd.as_str()]).await.ok()?;
        let text = info.get(&cmd)?;
        let v = text
            .split(';')
            .find_map(|kv| kv.strip_prefix("data_used_pct=")?.parse::<u32>().ok());
        best = best.max(v);
    }
    best
}

fn log(policy: &str, msg: impl std::fmt::Display) {
    eprintln!("backup-service: policy {policy}: {msg}");
}

async fn run_logged(s: &Scheduled, host: &str, kind: Kind, why: &str) {
    log(&s.policy.name, format_args!("{why}: starting a run ({})", kind.as_str()));
    match run_once(&s.policy, host, kind).await {
        Ok(r) => log(
            &s.policy.name,
            format_args!(
                "{why}: run {} ({}) {}: {} records, {} deletes, {} bytes, {:.2} s",
                r.id,
                r.kind.as_str(),
                r.result,
                r.records,
                r.deletes,
                r.bytes,
                r.duration().as_secs_f64()
            ),
        ),
        Err(e) => log(&s.policy.name, format_args!("{why}: catalogue error: {e}")),
    }
}

/// `bolide-backup service`: runs every policy of the config until killed. At start a policy
/// whose schedule fired since its newest run (the service or the host was down) runs once;
/// one with no run yet runs a full. Then each schedule runs at its times (a time missed while
/// a run was going runs once after it), and `data_used_pct` is polled.
///
/// # Errors
/// The config is bad, or a policy's catalogue cannot be read at start.
pub async fn service(args: ServiceArgs) -> Result<(), String> {
    let (policies, listen) = load_policies(&args.config)?;
    if policies.is_empty() {
        return Err(format!("{}: no [[backup.policy]]", args.config.display()));
    }
    let host = args.host.or(listen).unwrap_or_else(|| "127.0.0.1:3000".into());
    let mut sched = Vec::new();
    for p in policies {
        let incr = p.schedule.as_deref().map(cron).transpose()?;
        let full = p.full_schedule.as_deref().map(cron).transpose()?;
        let cat = Catalogue::load(&p.root()?)?;
        let last = cat.runs.last().map(|r| r.started_ms);
        let now = now_ms();
        let s = Scheduled {
            next_incr: incr.as_ref().and_then(|c| next_fire(c, last.unwrap_or(now))),
            next_full: full.as_ref().and_then(|c| next_fire(c, last.unwrap_or(now))),
            incr,
            full,
            policy: p,
            next_poll_ms: now,
            above_threshold: false,
        };
        if last.is_none() {
            run_logged(&s, &host, Kind::Full, "first run").await;
        }
        sched.push(s);
    }
    let client = backup::connect(&host, 3000).await.ok();
    loop {
        let now = now_ms();
        let mut wake = now + 1000;
        for s in &mut sched {
            let full_due = s.next_full.is_some_and(|t| t <= now);
            let incr_due = s.next_incr.is_some_and(|t| t <= now);
            if full_due || incr_due {
                let missed = s.next_full.min(s.next_incr).is_some_and(|t| now - t > 1000);
                let why = if missed { "missed schedule" } else { "schedule" };
                let kind = if full_due { Kind::Full } else { Kind::Incremental };
                run_logged(s, &host, kind, why).await;
                // The next times after now: runs missed during this one collapse into one.
                let after = now_ms();
                s.next_full = s.full.as_ref().and_then(|c| next_fire(c, after));
                s.next_incr = s.incr.as_ref().and_then(|c| next_fire(c, after));
            }
            if let (Some(threshold), Some(client)) = (s.policy.data_used_pct, &client) {
                if now >= s.next_poll_ms {
                    s.next_poll_ms = now + (s.policy.poll_secs.max(1) * 1000) as i64;
                    if let Some(pct) = data_used_pct(client, &s.policy.namespace).await {
                        let above = pct >= threshold;
                        if above && !s.above_threshold {
                            let why = format!("data_used_pct {pct} >= {threshold}");
                            run_logged(s, &host, Kind::Incremental, &why).await;
                        }
                        s.above_threshold = above;
                    }
                }
                wake = wake.min(s.next_poll_ms);
            }
            for t in [s.next_full, s.next_incr].into_iter().flatten() {
                wake = wake.min(t);
            }
        }
        let sleep = (wake - now_ms()).clamp(10, 1000);
        tokio::time::sleep(Duration::from_millis(sleep as u64)).await;
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyRunArgs {
    /// The node's config file.
    #[arg(long)]
    pub config: PathBuf,
    /// The policy to run.
    #[arg(long)]
    pub policy: String,
    /// `full` or `incremental` (default: incremental, a full when the chain has none).
    #[arg(long, default_value = "incremental")]
    pub kind: String,
    /// The node (`host:port`). Default: the config's `listen`.
    #[arg(long)]
    pub host: Option<String>,
}

/// `bolide-backup policy-run`: one run of a policy now (on demand); prints the run.
///
/// # Errors
/// No such policy, a bad kind, the catalogue fails, or the run failed.
pub async fn policy_run(args: PolicyRunArgs) -> Result<Run, String> {
    let (policies, listen) = load_policies(&args.config)?;
    let p = policies
        .iter()
        .find(|p| p.name == args.policy)
        .ok_or_else(|| format!("no backup policy {:?} in {}", args.policy, args.config.display()))?;
    let kind = match args.kind.as_str() {
        "full" => Kind::Full,
        "incremental" => Kind::Incremental,
        k => return Err(format!("bad --kind {k:?}: full or incremental")),
    };
    let host = args.host.or(listen).unwrap_or_else(|| "127.0.0.1:3000".into());
    let run = run_once(p, &host, kind).await?;
    if run.ok() {
        Ok(run)
    } else {
        Err(format!("run {} {}", run.id, run.result))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct CatalogueArgs {
    /// The target root (a policy's `target`).
    #[arg(long)]
    pub target: String,
    /// Apply a retention: keep the newest this many chains, delete the rest.
    #[arg(long)]
    pub keep_chains: Option<usize>,
    #[command(flatten)]
    pub object: ObjectStoreArgs,
}

/// `bolide-backup catalogue`: prints a target's catalogue (after `--keep-chains`, if given).
///
/// # Errors
/// The catalogue cannot be read, or the retention fails.
pub fn catalogue_cmd(args: CatalogueArgs) -> Result<String, String> {
    let root = Target::parse(&args.target, &args.object)?;
    let mut out = String::new();
    if let Some(k) = args.keep_chains {
        for id in prune(&root, k)? {
            out.push_str(&format!("deleted {id}\n"));
        }
    }
    out.push_str(&Catalogue::load(&root)?.to_string());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_with_and_without_seconds() {
        let every_2s = cron("*/2 * * * * *").unwrap();
        let t = next_fire(&every_2s, 1_000_000_000_500).unwrap();
        assert_eq!(t, 1_000_000_002_000);
        let nightly = cron("0 2 * * *").unwrap();
        // 2001-09-09T01:46:40Z → 02:00:00 the same day.
        assert_eq!(next_fire(&nightly, 1_000_000_000_000).unwrap(), 1_000_000_800_000);
        assert!(cron("61 * * * *").is_err());
    }

    #[test]
    fn policies_load_and_bad_ones_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bolide.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:3010\"\nworkers = 2\n[[backup.policy]]\nname = \"n\"\nnamespace = \"test\"\n\
             target = \"/tmp/b\"\nschedule = \"*/5 * * * * *\"\nkeep_chains = 3\n",
        )
        .unwrap();
        let (p, listen) = load_policies(&path).unwrap();
        assert_eq!(listen.as_deref(), Some("127.0.0.1:3010"));
        assert_eq!(p[0].keep_chains, 3);
        assert_eq!(p[0].overlap_secs, 60);
        std::fs::write(&path, "[[backup.policy]]\nname = \"n\"\nnamespace = \"t\"\ntarget = \"x\"\nschedule = \"bad\"\n").unwrap();
        assert!(load_policies(&path).unwrap_err().contains("bad cron"));
        std::fs::write(&path, "[[backup.policy]]\nname = \"n\"\nnamespace = \"t\"\ntarget = \"x\"\nshedule = \"* * * * *\"\n").unwrap();
        assert!(load_policies(&path).is_err(), "a misspelt key is an error");
    }
}
