//! `bolide-probe DEVICE` (also `bolide probe DEVICE`): measures a file or block device through
//! the io_uring backend (or, named `nvme:PCI[/nsN]`, a controller through the user-space NVMe
//! driver) — sequential bandwidth, random 4 KiB IOPS over queue depths, QD1
//! latency — prints them, and with `--write-profile` writes them into a hardware profile's
//! `[device.measured]` section. See `bolide_bench::probe`.
//!
//! Exit codes: 0 done, 1 the probe or the profile update failed, 2 a bad option.

use std::path::PathBuf;
use std::time::Duration;

use bolide_bench::devio::parse_size;
use bolide_bench::loadgen::report::{command_line, machine_json};
use bolide_bench::probe::{self, ProbeConfig};
use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "bolide probe",
    about = "Measure a device (iotune style) and write the [device.measured] section of a hardware profile"
)]
struct Args {
    /// File or block device, or `nvme:DDDD:BB:DD.F[/nsN]` for a controller bound to vfio-pci
    /// (Bolide's user-space NVMe driver). EVERYTHING ON IT IS OVERWRITTEN. A file is created or
    /// grown to --size (and filled once, so reads reach the disk).
    device: PathBuf,
    /// Size of the file to create or grow, e.g. 2G (binary suffixes K, M, G, T).
    #[arg(long, default_value = "2G")]
    size: String,
    /// Longest one step (one queue depth of one pattern) runs, seconds.
    #[arg(long, default_value_t = 2.0)]
    step_s: f64,
    /// Sequential I/O size, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    seq_io_bytes: usize,
    /// Queue depths of the sequential sweep, comma-separated.
    #[arg(long, default_value = "1,2,4,8,16,32")]
    seq_queue_depths: String,
    /// Highest queue depth of the random 4 KiB sweep (1, 2, 4, … up to it; it stops early when
    /// two doublings in a row gain under 5 % IOPS).
    #[arg(long, default_value_t = 64)]
    max_queue_depth: usize,
    /// Update the `[device.measured]` section of this profile (hw-profiles/*.toml) in place.
    #[arg(long)]
    write_profile: Option<PathBuf>,
    /// Which `[[device]]` of the profile (0-based, in file order).
    #[arg(long, default_value_t = 0)]
    device_index: usize,
    /// Write every step and the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Seed of the offset generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn config(a: &Args) -> Result<ProbeConfig, String> {
    let size = parse_size(&a.size).map_err(|e| format!("--size: {e}"))?;
    let is_block = bolide_bench::devio::nvme_target(&a.device).is_some()
        || std::fs::metadata(&a.device).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
    if !(a.step_s > 0.0 && a.step_s <= 600.0) {
        return Err(format!("--step-s: must be in (0, 600], got {}", a.step_s));
    }
    if a.seq_io_bytes == 0 || !a.seq_io_bytes.is_multiple_of(4096) || a.seq_io_bytes > 64 << 20 {
        return Err(format!(
            "--seq-io-bytes: must be a multiple of 4096 up to 64 MiB, got {}",
            a.seq_io_bytes
        ));
    }
    let seq_queue_depths = a
        .seq_queue_depths
        .split(',')
        .map(|s| s.trim().parse::<usize>().ok().filter(|d| (1..=256).contains(d)))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("--seq-queue-depths: {:?} is not a list of 1..=256", a.seq_queue_depths))?;
    if !(1..=1024).contains(&a.max_queue_depth) {
        return Err(format!(
            "--max-queue-depth: must be 1..=1024, got {}",
            a.max_queue_depth
        ));
    }
    Ok(ProbeConfig {
        device: a.device.clone(),
        size_bytes: (!is_block).then_some(size),
        step: Duration::from_secs_f64(a.step_s),
        seq_io_bytes: a.seq_io_bytes,
        seq_queue_depths,
        max_queue_depth: a.max_queue_depth,
        seed: a.seed,
    })
}

fn main() {
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let a = Args::parse();
    let cfg = match config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bolide probe: {e}");
            std::process::exit(2);
        }
    };
    // Check the profile before minutes of measuring, not after.
    if let Some(path) = &a.write_profile {
        let check = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| probe::update_profile(&text, a.device_index, &[], "check"));
        if let Err(e) = check {
            eprintln!("bolide probe: --write-profile {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    let result = match probe::probe(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bolide probe: {e}");
            std::process::exit(1);
        }
    };
    print!("{}", result.text());
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let date = command_line("date", &["-u", "+%F"]).unwrap_or_default();
    let measured_by = format!(
        "bolide probe {date}: {} bytes, {} s per step, best of QD sweeps (seq {} KiB, random 4 KiB), QD1 p50",
        result.capacity_bytes,
        a.step_s,
        cfg.seq_io_bytes / 1024
    );
    if let Some(path) = &a.json {
        let mut machine = machine_json();
        machine["loadavg_at_start"] = json!(loadavg_at_start.trim());
        let out = json!({
            "bench": "bolide probe",
            "command": command,
            "params": {
                "device": cfg.device.display().to_string(), "size_bytes": cfg.size_bytes,
                "step_s": a.step_s, "seq_io_bytes": cfg.seq_io_bytes,
                "seq_queue_depths": cfg.seq_queue_depths, "max_queue_depth": cfg.max_queue_depth,
                "seed": cfg.seed, "direct": true,
                "backend": if bolide_bench::devio::nvme_target(&cfg.device).is_some() {
                    "bolide_drivers::nvme (user-space NVMe over VFIO, polled queue pair, registered buffers)"
                } else {
                    "bolide_drivers::uring (io_uring, O_DIRECT, registered buffers)"
                },
            },
            "machine": machine,
            "result": result.json(),
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&out).expect("json") + "\n") {
            eprintln!("bolide probe: --json {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    if let Some(path) = &a.write_profile {
        if let Err(e) = probe::write_profile(path, a.device_index, &result, &measured_by) {
            eprintln!("bolide probe: --write-profile {e}");
            std::process::exit(1);
        }
        println!(
            "wrote [device.measured] of device {} in {}",
            a.device_index,
            path.display()
        );
    }
}
