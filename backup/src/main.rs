//! `bolide-backup backup ...` / `bolide-backup restore ...` (the node's `bolide backup` and
//! `bolide restore` run this binary). Flags are spelled as asbackup and asrestore spell them.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bolide_backup::{backup, policy, restore};

#[derive(Parser)]
#[command(
    name = "bolide-backup",
    version,
    about = "Backup and restore for Bolide and Aerospike (asbackup-compatible files)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Back up a namespace to .asb files (asbackup-compatible).
    #[command(disable_help_flag = true)]
    Backup(backup::BackupArgs),
    /// Restore .asb files into a namespace (asrestore-compatible).
    #[command(disable_help_flag = true)]
    Restore(restore::RestoreArgs),
    /// Run the node config's `[[backup.policy]]` schedules and events until killed
    /// (`bolide backup-service`).
    Service(policy::ServiceArgs),
    /// Run one backup of a policy now (on demand).
    PolicyRun(policy::PolicyRunArgs),
    /// Print a target's backup catalogue; `--keep-chains N` applies a retention first.
    Catalogue(policy::CatalogueArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Object-store retries (the crate's INFO lines) and anything RUST_LOG asks for, on stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("object_store=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.cmd {
        Cmd::Backup(args) if args.estimate => runtime.block_on(backup::estimate(&args)).map(|e| {
            println!("{e}");
        }),
        Cmd::Backup(args) => runtime.block_on(backup::run(args)).map(|s| {
            eprintln!("{s}");
        }),
        Cmd::Service(args) => runtime.block_on(policy::service(args)),
        Cmd::PolicyRun(args) => runtime.block_on(policy::policy_run(args)).map(|r| {
            println!(
                "run {} {} {}: {} records, {} deletes, {} bytes, {:.2} s",
                r.id,
                r.kind.as_str(),
                r.result,
                r.records,
                r.deletes,
                r.bytes,
                r.duration().as_secs_f64()
            );
        }),
        Cmd::Catalogue(args) => policy::catalogue_cmd(args).map(|t| print!("{t}")),
        Cmd::Restore(args) => runtime.block_on(restore::run(args)).and_then(|s| {
            eprintln!("{s}");
            if s.failed > 0 {
                Err(format!("{} record(s) failed to restore", s.failed))
            } else {
                Ok(())
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
