//! `bolide-bench act`: the command line of the ACT-style device test ([`crate::act`]).
//!
//! Exit codes: 0 every device passed (at `--load`, or at 1× with `--find-max`), 1 one failed or
//! a run could not be done (the message says which), 2 a bad option.
//!
//! `--device` may be given several times: each device gets its own thread and ring and the full
//! per-device load, and a load passes only when every device passes.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use serde_json::json;

use crate::act::{self, ActConfig, ActRun};
use crate::devio::parse_size;
use crate::loadgen::report::machine_json;

#[derive(Parser, Debug)]
#[command(
    name = "bolide-bench act",
    about = "ACT-style device test: Aerospike-like reads, large-block writes and defrag at N x load, \
             open loop, pass/fail per time slice (aerospike/act's rules)"
)]
struct ActArgs {
    /// File or block device to test (a file is created, or grown, to --device-bytes).
    /// Everything on it is overwritten. Repeat to test several devices at once.
    #[arg(long, required = true)]
    device: Vec<PathBuf>,
    /// Size of the file to create or grow, e.g. 4G (binary suffixes K, M, G, T).
    #[arg(long)]
    device_bytes: Option<String>,
    /// Load multiplier N: 2000·N reads/s and 1000·N writes/s per device.
    #[arg(long, default_value_t = 1.0)]
    load: f64,
    /// Raise N (1, 2, 4, … then bisect) until a run fails; report the largest passing N.
    #[arg(long)]
    find_max: bool,
    /// Highest N --find-max tries.
    #[arg(long, default_value_t = 256)]
    max_load: u64,
    /// Seconds per run.
    #[arg(long, default_value_t = 60.0)]
    duration_s: f64,
    /// Seconds per histogram slice (the pass rule is checked in each).
    #[arg(long, default_value_t = 10.0)]
    slice_s: f64,
    /// Record size, bytes (ACT record-bytes).
    #[arg(long, default_value_t = 1536)]
    record_bytes: u64,
    /// Write-block (large-block) size, bytes (ACT large-block-op-kbytes × 1024).
    #[arg(long, default_value_t = 131072)]
    wblock_size_bytes: u64,
    /// Defrag low-water mark, percent (ACT defrag-lwm-pct): sets the defrag amplification.
    #[arg(long, default_value_t = 50)]
    defrag_lwm_pct: u32,
    /// I/Os in flight at most (io_uring entries).
    #[arg(long, default_value_t = 64)]
    queue_depth: u32,
    /// Stop and fail a run when an operation has waited this long unsubmitted (ACT max-lag-sec).
    #[arg(long, default_value_t = 10.0)]
    max_lag_s: f64,
    /// Fill the whole device before the first run even if it is not sparse (a sparse file is
    /// always filled, so reads reach the disk).
    #[arg(long)]
    prep: bool,
    /// Seed of the offset generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results (with the command and the machine) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw read (and large-block) latency CDFs and reads per second as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// One configuration per `--device`, all with the same parameters.
fn config(a: &ActArgs) -> Result<Vec<ActConfig>, String> {
    let device_bytes = a
        .device_bytes
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| format!("--device-bytes: {e}"))?;
    let cfg = ActConfig {
        device: a.device[0].clone(),
        device_bytes,
        record_bytes: a.record_bytes,
        wblock_size_bytes: a.wblock_size_bytes,
        defrag_lwm_pct: a.defrag_lwm_pct,
        duration_s: a.duration_s,
        slice_s: a.slice_s,
        queue_depth: a.queue_depth,
        max_lag_s: a.max_lag_s,
        seed: a.seed,
    };
    cfg.validate()?;
    if !(a.load > 0.0 && a.load.is_finite()) {
        return Err(format!("--load: must be > 0, got {}", a.load));
    }
    if a.max_load == 0 {
        return Err("--max-load: must be at least 1".into());
    }
    if a.plot
        .as_ref()
        .is_some_and(|p| p.extension().is_none_or(|e| !e.eq_ignore_ascii_case("svg")))
    {
        return Err("--plot: only SVG is supported; name the file *.svg".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(d) = a.device.iter().find(|d| !seen.insert(*d)) {
        return Err(format!("--device: {} is given twice", d.display()));
    }
    Ok(a.device
        .iter()
        .map(|d| ActConfig {
            device: d.clone(),
            ..cfg.clone()
        })
        .collect())
}

/// Runs `bolide-bench act ARGS` (`argv[0]` is the program name as shown in errors) and returns
/// the exit code.
pub fn main(argv: Vec<OsString>) -> i32 {
    let loadavg_at_start = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let a = match ActArgs::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let cfgs = match config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bolide-bench act: {e}");
            return 2;
        }
    };
    let names = cfgs
        .iter()
        .map(|c| c.device.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut devs = Vec::with_capacity(cfgs.len());
    for cfg in &cfgs {
        match act::open_and_prep(cfg, a.prep) {
            Ok((dev, fill)) => {
                if let Some((bytes, secs)) = fill {
                    eprintln!(
                        "filled {} ({bytes} bytes) in {secs:.1} s ({:.0} MB/s)",
                        cfg.device.display(),
                        bytes as f64 / 1e6 / secs.max(1e-9)
                    );
                }
                devs.push((dev, fill));
            }
            Err(e) => {
                eprintln!("bolide-bench act: {e}");
                return 1;
            }
        }
    }
    let mut runs: Vec<ActRun> = Vec::new();
    // One load on every device at once (a thread and a ring each); passes if all pass.
    let mut one = |n: f64, runs: &mut Vec<ActRun>| -> Result<bool, String> {
        let first = runs.is_empty();
        let results: Vec<Result<ActRun, String>> = std::thread::scope(|s| {
            let hs: Vec<_> = devs
                .iter_mut()
                .zip(&cfgs)
                .map(|((dev, _), cfg)| s.spawn(move || act::run_load(dev, cfg, n)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("an ACT thread panicked".into())))
                .collect()
        });
        let mut passed = true;
        for ((r, cfg), (_, fill)) in results.into_iter().zip(&cfgs).zip(&devs) {
            let mut r = r?;
            if first {
                r.fill = *fill;
            }
            print!("{}", act::run_text(cfg, &r));
            passed &= r.passed();
            runs.push(r);
        }
        if cfgs.len() > 1 {
            println!(
                "ACT {n}x on {names}: {}",
                if passed { "PASS on every device" } else { "FAIL" }
            );
        }
        Ok(passed)
    };
    let mut max_passing: Option<u64> = None;
    let outcome = if a.find_max {
        let mut lowest_fail = None;
        let mut result = Ok(());
        while let Some(n) = act::next_load(max_passing, lowest_fail, a.max_load) {
            match one(n as f64, &mut runs) {
                Ok(true) => max_passing = Some(n),
                Ok(false) => lowest_fail = Some(n),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if result.is_ok() {
            println!(
                "ACT --find-max on {names}: largest passing load {}",
                max_passing.map_or("none (1x failed)".to_string(), |n| format!("{n}x"))
            );
        }
        result
    } else {
        one(a.load, &mut runs).map(|_| ())
    };
    if let Err(e) = &outcome {
        eprintln!("bolide-bench act: {e}");
    }
    let cfg = &cfgs[0];
    if let Some(path) = &a.json {
        let mut machine = machine_json();
        machine["loadavg_at_start"] = json!(loadavg_at_start.trim());
        let mut params = act::config_json(cfg);
        params["devices"] = json!(cfgs.iter().map(|c| c.device.display().to_string()).collect::<Vec<_>>());
        let out = json!({
            "bench": "bolide-bench act",
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "params": params,
            "find_max": a.find_max,
            "max_passing_load_n": if a.find_max { json!(max_passing) } else { json!(null) },
            "machine": machine,
            "runs": runs.iter().map(|r| act::run_json(cfg, r)).collect::<Vec<_>>(),
            "error": outcome.as_ref().err(),
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&out).expect("json") + "\n") {
            eprintln!("bolide-bench act: --json {}: {e}", path.display());
            return 1;
        }
    }
    if let Some(path) = &a.plot {
        let title = if a.find_max {
            format!(
                "ACT --find-max on {names}: max passing {}",
                max_passing.map_or("none".into(), |n| format!("{n}x"))
            )
        } else {
            format!("ACT {}x on {names}", a.load)
        };
        if let Err(e) = crate::plot::write_plot(path, &act::plot_data(cfg, &runs, &title)) {
            eprintln!("bolide-bench act: --plot: {e}");
            return 1;
        }
    }
    let passed = outcome.is_ok()
        && if a.find_max {
            max_passing.is_some()
        } else {
            runs.iter().all(ActRun::passed)
        };
    if passed {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Vec<ActConfig>, String> {
        let a =
            ActArgs::try_parse_from(std::iter::once("act").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        config(&a)
    }

    #[test]
    fn options_are_checked() {
        let c = parse(&["--device", "/tmp/x", "--device-bytes", "4G"])
            .unwrap()
            .remove(0);
        assert_eq!(c.device_bytes, Some(4 << 30));
        assert_eq!(c.duration_s, 60.0);
        assert_eq!(c.slice_s, 10.0);
        assert!(parse(&["--device", "x", "--defrag-lwm-pct", "100"])
            .unwrap_err()
            .contains("--defrag-lwm-pct"));
        assert!(parse(&["--device", "x", "--wblock-size-bytes", "1000"])
            .unwrap_err()
            .contains("--wblock-size-bytes"));
        assert!(parse(&["--device", "x", "--slice-s", "100"])
            .unwrap_err()
            .contains("--slice-s"));
        assert!(parse(&["--device", "x", "--plot", "a.png"])
            .unwrap_err()
            .contains("--plot"));
        assert!(parse(&["--device", "x", "--load", "0"]).unwrap_err().contains("--load"));
        assert!(parse(&[]).is_err(), "--device is required");
        let two = parse(&["--device", "a", "--device", "b", "--load", "2"]).unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].device, PathBuf::from("b"));
        assert!(parse(&["--device", "a", "--device", "a"])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn two_devices_run_at_once_and_report_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = |n: &str| dir.path().join(n).display().to_string();
        let (json_path, svg_path) = (d("act.json"), d("act.svg"));
        let argv = [
            "bolide-bench act",
            "--device",
            &d("a.dat"),
            "--device",
            &d("b.dat"),
            "--device-bytes",
            "8M",
            "--duration-s",
            "1",
            "--slice-s",
            "1",
            "--queue-depth",
            "8",
            "--json",
            &json_path,
            "--plot",
            &svg_path,
        ];
        let code = main(argv.iter().map(OsString::from).collect());
        assert!(code == 0 || code == 1, "pass or fail, not a usage error: {code}");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let runs = v["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0]["device"], d("a.dat"));
        assert_eq!(runs[1]["device"], d("b.dat"));
        for r in runs {
            assert_eq!(
                r["totals"]["read"]["count"], 2000,
                "each device gets the full 1x read load"
            );
        }
        assert_eq!(v["params"]["devices"].as_array().unwrap().len(), 2);
        assert!(std::fs::metadata(&svg_path).unwrap().len() > 1000);
    }
}
