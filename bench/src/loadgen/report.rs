//! A phase's results as JSON and as text, the client's (and optionally the server's) CPU time,
//! and the machine description written next to every result.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use serde_json::{json, Value};

use super::stats::{over_pct, result_code_name, KindStats, BUCKETS_MS};
use super::workload::OpKind;

/// The percentiles reported for every operation kind, as (JSON key, quantile).
pub const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99_9", 0.999),
    ("p99_99", 0.9999),
    ("max", 1.0),
];

/// Quantiles at which the latency CDF is written (for plots), from 0 to 1.
pub const CDF_QUANTILES: [f64; 19] = [
    0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99995, 0.99999, 0.999995, 0.999999,
    0.9999995, 0.9999999, 1.0,
];

/// One point of the throughput-over-time series (one progress line).
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesPoint {
    /// End of the interval, seconds since the phase started.
    pub t_s: f64,
    /// Length of the interval, seconds.
    pub interval_s: f64,
    /// Successful operations per second, per kind (indexed by [`OpKind::index`]).
    pub ok_per_s: [f64; 5],
    /// Failed operations in the interval.
    pub failed: u64,
    /// Median latency of the interval's successful operations, all kinds, µs.
    pub p50_us: f64,
    /// 99th percentile of the same, µs.
    pub p99_us: f64,
    /// This process's CPU over the interval, in cores (1.0 = one core busy).
    pub client_cpu_cores: f64,
    /// Time this process's threads waited for a CPU, seconds per second of the interval.
    pub client_runqueue_wait: f64,
    /// The server process's CPU over the interval, in cores (with `--server-pid`).
    pub server_cpu_cores: Option<f64>,
    /// Time the server's threads waited for a CPU, seconds per second (with `--server-pid`).
    pub server_runqueue_wait: Option<f64>,
    /// False while warming up.
    pub measured: bool,
}

/// Everything one phase (load or run) measured.
#[derive(Clone, Debug)]
pub struct PhaseResult {
    /// `load` or `run`.
    pub name: String,
    /// Length of the measured part (after warm-up), seconds.
    pub measured_s: f64,
    /// Warm-up excluded from the totals, seconds.
    pub warmup_s: f64,
    /// Whole phase, warm-up and draining the last operations included, seconds.
    pub wall_s: f64,
    /// Open-loop target rate, operations per second; `None` for closed loop.
    pub target_rate_per_s: Option<f64>,
    /// Requests in flight (workers).
    pub in_flight: usize,
    /// Measured totals per kind.
    pub totals: BTreeMap<OpKind, KindStats>,
    /// One point per second.
    pub series: Vec<SeriesPoint>,
    /// This process's user + system CPU over the whole phase, seconds.
    pub client_cpu_s: f64,
    /// Time this process's threads waited for a CPU over the whole phase, seconds.
    pub client_runqueue_wait_s: f64,
    /// The server process's user + system CPU over the whole phase, seconds (with `--server-pid`).
    pub server_cpu_s: Option<f64>,
    /// Time the server's threads waited for a CPU over the whole phase, seconds (with `--server-pid`).
    pub server_runqueue_wait_s: Option<f64>,
}

impl PhaseResult {
    /// Successful measured operations per second, all kinds.
    pub fn ok_per_s(&self) -> f64 {
        let ok: u64 = self.totals.values().map(KindStats::ok).sum();
        ok as f64 / self.measured_s.max(1e-9)
    }

    /// Operations (successful or not) over the whole phase, from the series.
    pub fn ops_whole_phase(&self) -> u64 {
        self.series
            .iter()
            .map(|p| (p.ok_per_s.iter().sum::<f64>() * p.interval_s).round() as u64 + p.failed)
            .sum()
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A histogram's summary: count, mean, min, the [`PERCENTILES`], all in µs.
pub fn histogram_json(h: &hdrhistogram::Histogram<u64>) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("count".into(), json!(h.len()));
    if h.is_empty() {
        return Value::Object(m);
    }
    m.insert("mean_us".into(), json!(us(h.mean() as u64)));
    m.insert("min_us".into(), json!(us(h.min())));
    for (name, q) in PERCENTILES {
        let v = if q >= 1.0 { h.max() } else { h.value_at_quantile(q) };
        m.insert(format!("{name}_us"), json!(us(v)));
    }
    Value::Object(m)
}

/// One kind's totals as JSON.
pub fn kind_json(k: &KindStats, measured_s: f64) -> Value {
    let errors: serde_json::Map<String, Value> = k
        .errors
        .iter()
        .map(|(c, n)| (format!("{c} {}", result_code_name(*c)), json!(n)))
        .collect();
    let cdf: Vec<Value> = if k.latency.is_empty() {
        Vec::new()
    } else {
        CDF_QUANTILES
            .iter()
            .map(|&q| {
                json!([
                    q,
                    us(if q >= 1.0 {
                        k.latency.max()
                    } else {
                        k.latency.value_at_quantile(q)
                    })
                ])
            })
            .collect()
    };
    let mut v = json!({
        "ok": k.ok(),
        "failed": k.failed(),
        "ok_per_s": round3(k.ok() as f64 / measured_s.max(1e-9)),
        "latency": histogram_json(&k.latency),
        "errors_by_result_code": errors,
        "latency_cdf_quantile_us": cdf,
        "clamped_over_60s": k.clamped,
    });
    for ms in BUCKETS_MS {
        v[format!("over_{ms}ms_pct")] = json!(round3(over_pct(&k.latency, ms * 1_000_000)));
    }
    if let Some(h) = &k.service {
        v["service_time"] = histogram_json(h);
    }
    if let Some(h) = &k.send_lag {
        v["send_lag"] = histogram_json(h);
    }
    v
}

/// A phase as JSON.
pub fn phase_json(p: &PhaseResult) -> Value {
    let kinds: serde_json::Map<String, Value> = p
        .totals
        .iter()
        .map(|(k, s)| (k.name().to_string(), kind_json(s, p.measured_s)))
        .collect();
    let ok: u64 = p.totals.values().map(KindStats::ok).sum();
    let failed: u64 = p.totals.values().map(KindStats::failed).sum();
    let ops_whole = p.ops_whole_phase();
    let series: Vec<Value> = p
        .series
        .iter()
        .map(|s| {
            let per: serde_json::Map<String, Value> = OpKind::ALL
                .iter()
                .filter(|k| s.ok_per_s[k.index()] > 0.0)
                .map(|k| (k.name().to_string(), json!(s.ok_per_s[k.index()].round())))
                .collect();
            json!({
                "t_s": round3(s.t_s), "interval_s": round3(s.interval_s),
                "ok_per_s": per, "ok_per_s_total": s.ok_per_s.iter().sum::<f64>().round(),
                "failed": s.failed, "p50_us": s.p50_us, "p99_us": s.p99_us,
                "client_cpu_cores": round3(s.client_cpu_cores), "client_runqueue_wait": round3(s.client_runqueue_wait),
                "server_cpu_cores": s.server_cpu_cores.map(round3), "server_runqueue_wait": s.server_runqueue_wait.map(round3),
                "measured": s.measured,
            })
        })
        .collect();
    json!({
        "phase": p.name,
        "mode": if p.target_rate_per_s.is_some() { "open_loop" } else { "closed_loop" },
        "target_rate_per_s": p.target_rate_per_s,
        "in_flight": p.in_flight,
        "measured_s": round3(p.measured_s),
        "warmup_s": round3(p.warmup_s),
        "wall_s": round3(p.wall_s),
        "ok": ok,
        "failed": failed,
        "ok_per_s": round3(p.ok_per_s()),
        "ops": kinds,
        "cpu": {
            "client_cpu_s": round3(p.client_cpu_s),
            "client_cpu_cores": round3(p.client_cpu_s / p.wall_s.max(1e-9)),
            "client_cpu_us_per_op": if ops_whole > 0 { json!(round3(p.client_cpu_s * 1e6 / ops_whole as f64)) } else { Value::Null },
            "server_cpu_s": p.server_cpu_s.map(round3),
            "server_cpu_cores": p.server_cpu_s.map(|s| round3(s / p.wall_s.max(1e-9))),
            "server_cpu_us_per_op": p.server_cpu_s.filter(|_| ops_whole > 0).map(|s| round3(s * 1e6 / ops_whole as f64)),
            "ops_whole_phase": ops_whole,
            "client_runqueue_wait_s": round3(p.client_runqueue_wait_s),
            "server_runqueue_wait_s": p.server_runqueue_wait_s.map(round3),
            "note": "runqueue_wait: time the process's threads were runnable but had no CPU (/proc/<pid>/task/*/schedstat), i.e. other load on the machine",
        },
        "series": series,
    })
}

/// What `--plot` draws for a phase: one latency CDF per operation kind (measured totals) and
/// successful operations per second over the phase, per kind and in total (warm-up included,
/// since the series is what the progress lines showed). Intervals shorter than 0.25 s (the
/// tail end of a phase) are left out: their rates are noise.
pub fn plot_data(p: &PhaseResult, title: &str) -> crate::plot::PlotData {
    use crate::plot::{cdf_points, CdfSeries, PlotData, RateSeries};
    let cdf = p
        .totals
        .iter()
        .filter(|(_, st)| !st.latency.is_empty())
        .map(|(k, st)| CdfSeries {
            name: k.name().to_string(),
            points: cdf_points(&st.latency),
        })
        .collect();
    let mut rate: Vec<RateSeries> = OpKind::ALL
        .iter()
        .filter(|k| p.series.iter().any(|s| s.ok_per_s[k.index()] > 0.0))
        .map(|k| RateSeries {
            name: k.name().to_string(),
            points: p
                .series
                .iter()
                .filter(|s| s.interval_s >= 0.25)
                .map(|s| (s.t_s, s.ok_per_s[k.index()]))
                .collect(),
        })
        .collect();
    if rate.len() > 1 {
        rate.push(RateSeries {
            name: "total".into(),
            points: p
                .series
                .iter()
                .filter(|s| s.interval_s >= 0.25)
                .map(|s| (s.t_s, s.ok_per_s.iter().sum()))
                .collect(),
        });
    }
    PlotData {
        title: title.to_string(),
        cdf,
        rate,
        rate_label: "successful ops/s".into(),
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// A phase as a text table (what a person reads at the end of a run).
pub fn phase_text(p: &PhaseResult) -> String {
    let mut s = String::new();
    let mode = match p.target_rate_per_s {
        Some(r) => format!("open loop at {r} ops/s (latency from the intended send time)"),
        None => "closed loop".to_string(),
    };
    let _ = writeln!(
        s,
        "== {}: {:.1} s measured (+{:.1} s warm-up), {mode}, {} in flight: {:.0} ops/s",
        p.name,
        p.measured_s,
        p.warmup_s,
        p.in_flight,
        p.ok_per_s()
    );
    let _ = writeln!(
        s,
        "{:<7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "op",
        "ok",
        "ok/s",
        "p50ms",
        "p90ms",
        "p99ms",
        "p99.9ms",
        "p99.99ms",
        "max ms",
        ">1ms%",
        ">8ms%",
        ">64ms%",
        "failed"
    );
    for (k, st) in &p.totals {
        let h = &st.latency;
        let q = |x: f64| {
            if h.is_empty() {
                "-".to_string()
            } else {
                ms(h.value_at_quantile(x))
            }
        };
        let _ = writeln!(
            s,
            "{:<7} {:>10} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7.3} {:>7.3} {:>7.3} {:>7}",
            k.name(),
            st.ok(),
            st.ok() as f64 / p.measured_s.max(1e-9),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            q(0.9999),
            if h.is_empty() { "-".to_string() } else { ms(h.max()) },
            over_pct(h, 1_000_000),
            over_pct(h, 8_000_000),
            over_pct(h, 64_000_000),
            st.failed()
        );
        if let (Some(sv), Some(lag)) = (&st.service, &st.send_lag) {
            let _ = writeln!(
                s,
                "        service time p50 {} p99 {} max {} ms; send lag p99 {} max {} ms",
                ms(sv.value_at_quantile(0.5)),
                ms(sv.value_at_quantile(0.99)),
                ms(sv.max()),
                ms(lag.value_at_quantile(0.99)),
                ms(lag.max())
            );
        }
        for (c, n) in &st.errors {
            let _ = writeln!(s, "        error {c} {}: {n}", result_code_name(*c));
        }
    }
    let ops_whole = p.ops_whole_phase().max(1) as f64;
    let _ = write!(
        s,
        "client CPU {:.2} s = {:.2} cores, {:.1} us/op",
        p.client_cpu_s,
        p.client_cpu_s / p.wall_s.max(1e-9),
        p.client_cpu_s * 1e6 / ops_whole
    );
    if let Some(sc) = p.server_cpu_s {
        let _ = write!(
            s,
            "; server CPU {:.2} s = {:.2} cores, {:.1} us/op",
            sc,
            sc / p.wall_s.max(1e-9),
            sc * 1e6 / ops_whole
        );
    }
    let _ = write!(s, "; waited for a CPU: client {:.2} s", p.client_runqueue_wait_s);
    if let Some(w) = p.server_runqueue_wait_s {
        let _ = write!(s, ", server {w:.2} s");
    }
    s.push('\n');
    s
}

/// User + system CPU seconds of process `pid` ("self" for this one) so far, from
/// `/proc/<pid>/stat` fields 14 and 15 (clock ticks); `None` when unreadable.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|s| s.parse::<u64>().ok());
    Some((ticks(14)? + ticks(15)?) as f64 / clock_ticks_per_s())
}

/// Seconds the threads of process `pid` ("self" for this one) have spent runnable but waiting
/// for a CPU, summed over its live threads (`/proc/<pid>/task/*/schedstat`, second field, ns);
/// `None` when unreadable.
pub fn runqueue_wait_seconds(pid: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    Some(ns as f64 / 1e9)
}

/// CPU and run-queue wait of one process at one moment, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcSample {
    /// User + system CPU so far.
    pub cpu_s: f64,
    /// Runnable but not running so far.
    pub runqueue_wait_s: f64,
}

impl ProcSample {
    /// A sample of process `pid` ("self" for this one), `None` when it cannot be read.
    pub fn of(pid: &str) -> Option<ProcSample> {
        Some(ProcSample {
            cpu_s: cpu_seconds(pid)?,
            runqueue_wait_s: runqueue_wait_seconds(pid)?,
        })
    }
}

fn clock_ticks_per_s() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        command_line("getconf", &["CLK_TCK"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(100.0)
    })
}

/// First line of a command's stdout, if it ran and succeeded.
pub fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    })
}

/// The machine and build a result came from: CPU model, cores, memory, kernel, OS, rustc,
/// git commit, load average now (`loadavg_at_end`), whether debug assertions were on.
pub fn machine_json() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(key).map(|r| {
                r.trim_start_matches([' ', '\t', ':', '='])
                    .trim_matches('"')
                    .trim()
                    .to_string()
            })
        })
    };
    json!({
        "hostname": command_line("hostname", &[]),
        "date_utc": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": field(&read("/proc/cpuinfo"), "model name"),
        "mem_total": field(&read("/proc/meminfo"), "MemTotal"),
        "kernel": command_line("uname", &["-r"]),
        "os": field(&read("/etc/os-release"), "PRETTY_NAME"),
        "rustc": command_line("rustc", &["--version"]),
        "git_commit": command_line("git", &["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"]),
        "loadavg_at_end": read("/proc/loadavg").trim(),
        "debug_assertions": cfg!(debug_assertions),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::schedule::OpTimes;
    use crate::loadgen::stats::Recorder;

    fn phase() -> PhaseResult {
        let r = Recorder::new(2, false);
        for i in 0..1000u64 {
            let t = OpTimes {
                intended_ns: 0,
                sent_ns: 0,
                done_ns: (i + 1) * 10_000, // 10 us .. 10 ms
            };
            r.record(
                i as usize,
                if i % 2 == 0 { OpKind::Read } else { OpKind::Update },
                t,
                Ok(()),
                true,
            );
        }
        r.record(
            0,
            OpKind::Read,
            OpTimes {
                intended_ns: 0,
                sent_ns: 0,
                done_ns: 1,
            },
            Err(2),
            true,
        );
        PhaseResult {
            name: "run".into(),
            measured_s: 2.0,
            warmup_s: 1.0,
            wall_s: 3.0,
            target_rate_per_s: None,
            in_flight: 4,
            totals: r.totals(),
            series: vec![SeriesPoint {
                t_s: 1.0,
                interval_s: 1.0,
                ok_per_s: [600.0, 400.0, 0.0, 0.0, 0.0],
                failed: 1,
                p50_us: 100.0,
                p99_us: 900.0,
                client_cpu_cores: 0.5,
                client_runqueue_wait: 0.0,
                server_cpu_cores: None,
                server_runqueue_wait: None,
                measured: false,
            }],
            client_cpu_s: 0.3,
            client_runqueue_wait_s: 0.01,
            server_cpu_s: Some(0.6),
            server_runqueue_wait_s: Some(0.02),
        }
    }

    #[test]
    fn phase_json_has_the_figures() {
        let v = phase_json(&phase());
        assert_eq!(v["ok"], 1000);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["ok_per_s"], 500.0);
        assert_eq!(v["mode"], "closed_loop");
        let read = &v["ops"]["read"];
        assert_eq!(read["ok"], 500);
        assert_eq!(read["ok_per_s"], 250.0);
        assert_eq!(read["failed"], 1);
        let errs = read["errors_by_result_code"].as_object().unwrap();
        assert_eq!(errs.len(), 1);
        assert!(errs.keys().next().unwrap().starts_with("2 "));
        // Reads are the even i: 10, 30, ..., 9990 us; median ~5 ms, max ~9.99 ms.
        let p50 = read["latency"]["p50_us"].as_f64().unwrap();
        assert!((p50 - 5000.0).abs() < 30.0, "p50 {p50}");
        let max = read["latency"]["max_us"].as_f64().unwrap();
        assert!((max - 9990.0).abs() < 10.0, "max {max}");
        for key in ["p90_us", "p99_us", "p99_9_us", "p99_99_us", "mean_us", "min_us"] {
            assert!(read["latency"][key].is_f64(), "{key}");
        }
        // 10 us steps: ops over 1 ms are those from 1.01 ms up: 450 of 500 reads; none over 64 ms.
        assert!((read["over_1ms_pct"].as_f64().unwrap() - 90.0).abs() < 0.5);
        assert!((read["over_8ms_pct"].as_f64().unwrap() - 20.0).abs() < 0.5);
        assert_eq!(read["over_64ms_pct"], 0.0);
        let cdf = read["latency_cdf_quantile_us"].as_array().unwrap();
        assert_eq!(cdf.len(), CDF_QUANTILES.len());
        assert!(
            cdf.windows(2).all(|w| w[0][1].as_f64() <= w[1][1].as_f64()),
            "CDF is monotone"
        );
        assert_eq!(v["cpu"]["ops_whole_phase"], 1001);
        assert_eq!(v["cpu"]["server_cpu_cores"], 0.2);
        assert_eq!(v["series"][0]["ok_per_s"]["read"], 600.0);
        assert!(v["series"][0]["ok_per_s"].get("insert").is_none());
    }

    #[test]
    fn phase_text_has_a_row_per_kind() {
        let t = phase_text(&phase());
        assert!(t.contains("500 ops/s"), "{t}");
        assert_eq!(
            t.lines()
                .filter(|l| l.starts_with("read ") || l.starts_with("update "))
                .count(),
            2
        );
        assert!(t.contains("error 2 "), "{t}");
        assert!(t.contains("server CPU"), "{t}");
    }

    #[test]
    fn a_plot_of_a_phase_is_written() {
        let d = plot_data(&phase(), "test");
        assert_eq!(d.cdf.len(), 2, "read and update");
        assert_eq!(d.rate.len(), 3, "read, update and total");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.svg");
        crate::plot::write_plot(&path, &d).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 1000);
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds("self").is_some());
        assert!(cpu_seconds("999999999").is_none());
        assert!(ProcSample::of("self").is_some());
        assert!(runqueue_wait_seconds("999999999").is_none());
    }
}
