//! `bolide-backup backup ...` / `bolide-backup restore ...` (the node's `bolide backup` and
//! `bolide restore` run this binary). Flags are spelled as asbackup and asrestore spell them.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bolide_backup::{backup, restore};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
