//! `bolide probe DEVICE` (binary `bolide-probe`): measure a device the way Seastar's `iotune`
//! does, through the same io_uring backend the node uses (`O_DIRECT`, registered buffers), and
//! write the figures into a hardware profile's `[device.measured]` section
//! (`bolide_node::profile::MeasuredDevice`, `docs/HARDWARE.md`).
//!
//! Steps, each closed loop (a new I/O as each completes) for at most `step` seconds:
//!
//! 1. **fill**: a regular file that is sparse (new, or grown) is written once end to end with
//!    1 MiB writes, so that reads reach the disk rather than the filesystem's holes;
//! 2. **sequential write, then read**: `seq_io_bytes` (1 MiB) I/Os at each queue depth of
//!    `seq_queue_depths` (1, 2, 4, 8, 16, 32); the figure is the best bandwidth, MB/s (10^6 B/s);
//! 3. **random read, then write**: 4 KiB I/Os at uniformly random 4 KiB-aligned offsets at queue
//!    depths 1, 2, 4, … up to `max_queue_depth` (64), stopping early once two doublings in a row
//!    each gained under 5 % IOPS over the best so far (saturated); the figure is the best IOPS;
//! 4. **QD1 latency**: p50 and p99 of the queue-depth-1 random steps, µs (the profile keeps the
//!    p50).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bolide_drivers::any::AnyDevice;
use bolide_drivers::{BlockDevice, IoKind};
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::devio::{self, Pattern, StepResult};

/// What to probe and how long.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// File or block device. Its contents are overwritten.
    pub device: PathBuf,
    /// For a regular file: create or grow it to this many bytes (`None`: use it as it is).
    pub size_bytes: Option<u64>,
    /// Longest one step runs.
    pub step: Duration,
    /// Sequential I/O size, bytes (a multiple of 4096).
    pub seq_io_bytes: usize,
    /// Queue depths of the sequential sweep.
    pub seq_queue_depths: Vec<usize>,
    /// Highest queue depth of the random sweep (1, 2, 4, … up to it).
    pub max_queue_depth: usize,
    /// Seed of the offset generator.
    pub seed: u64,
}

impl ProbeConfig {
    /// Defaults: 2 s per step, 1 MiB sequential I/O at QD 1–32, random up to QD 64.
    pub fn new(device: PathBuf) -> ProbeConfig {
        ProbeConfig {
            device,
            size_bytes: None,
            step: Duration::from_secs(2),
            seq_io_bytes: 1 << 20,
            seq_queue_depths: vec![1, 2, 4, 8, 16, 32],
            max_queue_depth: 64,
            seed: 1,
        }
    }
}

/// One step's summary.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSummary {
    pub queue_depth: usize,
    pub io_bytes: usize,
    pub ios: u64,
    pub secs: f64,
    pub iops: f64,
    pub mbps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU time of the probing thread per I/O, µs (`None`: not reported).
    pub cpu_us_per_io: Option<f64>,
}

impl StepSummary {
    fn of(queue_depth: usize, io_bytes: usize, r: &StepResult) -> StepSummary {
        let q = |x| r.latency.value_at_quantile(x) as f64 / 1e3;
        StepSummary {
            queue_depth,
            io_bytes,
            ios: r.ios,
            secs: r.secs,
            iops: r.iops(),
            mbps: r.mbps(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            cpu_us_per_io: r.cpu_us_per_io(),
        }
    }

    fn json(&self) -> Value {
        let r1 = |x: f64| (x * 10.0).round() / 10.0;
        json!({
            "queue_depth": self.queue_depth, "io_bytes": self.io_bytes, "ios": self.ios,
            "seconds": (self.secs * 1000.0).round() / 1000.0, "iops": r1(self.iops), "mbps": r1(self.mbps),
            "p50_us": r1(self.p50_us), "p99_us": r1(self.p99_us),
            "cpu_us_per_io": self.cpu_us_per_io.map(|c| (c * 100.0).round() / 100.0),
        })
    }
}

/// Everything a probe measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub device: String,
    pub capacity_bytes: u64,
    /// The fill, when the file was sparse.
    pub fill: Option<StepSummary>,
    pub seq_write: Vec<StepSummary>,
    pub seq_read: Vec<StepSummary>,
    pub rand_read: Vec<StepSummary>,
    pub rand_write: Vec<StepSummary>,
}

fn best(steps: &[StepSummary], key: impl Fn(&StepSummary) -> f64) -> f64 {
    steps.iter().map(key).fold(0.0, f64::max)
}

fn qd1(steps: &[StepSummary]) -> Option<&StepSummary> {
    steps.iter().find(|s| s.queue_depth == 1)
}

impl ProbeResult {
    /// The figures of `[device.measured]`: (key, value), in the profile's order.
    pub fn measured(&self) -> [(&'static str, f64); 6] {
        [
            ("seq_read_mbps", best(&self.seq_read, |s| s.mbps)),
            ("seq_write_mbps", best(&self.seq_write, |s| s.mbps)),
            ("rand_read_iops", best(&self.rand_read, |s| s.iops)),
            ("rand_write_iops", best(&self.rand_write, |s| s.iops)),
            ("qd1_read_latency_us", qd1(&self.rand_read).map_or(0.0, |s| s.p50_us)),
            ("qd1_write_latency_us", qd1(&self.rand_write).map_or(0.0, |s| s.p50_us)),
        ]
    }

    /// All steps and the figures as JSON.
    pub fn json(&self) -> Value {
        let steps = |v: &[StepSummary]| v.iter().map(StepSummary::json).collect::<Vec<_>>();
        let figures: serde_json::Map<String, Value> = self
            .measured()
            .iter()
            .map(|(k, v)| ((*k).to_string(), json!((v * 10.0).round() / 10.0)))
            .collect();
        json!({
            "device": self.device,
            "capacity_bytes": self.capacity_bytes,
            "measured": figures,
            "qd1_read_p99_us": qd1(&self.rand_read).map(|s| s.p99_us),
            "qd1_write_p99_us": qd1(&self.rand_write).map(|s| s.p99_us),
            "fill": self.fill.as_ref().map(StepSummary::json),
            "seq_write": steps(&self.seq_write),
            "seq_read": steps(&self.seq_read),
            "rand_read": steps(&self.rand_read),
            "rand_write": steps(&self.rand_write),
        })
    }

    /// A table per sweep, then the profile figures.
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "== bolide probe {} ({} bytes)", self.device, self.capacity_bytes);
        if let Some(f) = &self.fill {
            let _ = writeln!(
                s,
                "fill: {} MB in {:.1} s = {:.0} MB/s",
                f.ios * f.io_bytes as u64 / 1_000_000,
                f.secs,
                f.mbps
            );
        }
        for (name, steps) in [
            ("sequential write", &self.seq_write),
            ("sequential read", &self.seq_read),
            ("random read", &self.rand_read),
            ("random write", &self.rand_write),
        ] {
            let _ = writeln!(
                s,
                "{name:<17} {:>4} {:>8} {:>10} {:>9} {:>9} {:>9} {:>10}",
                "qd", "io KiB", "IOPS", "MB/s", "p50 us", "p99 us", "cpu us/io"
            );
            for st in steps {
                let _ = writeln!(
                    s,
                    "{:<17} {:>4} {:>8} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>10.2}",
                    "",
                    st.queue_depth,
                    st.io_bytes / 1024,
                    st.iops,
                    st.mbps,
                    st.p50_us,
                    st.p99_us,
                    st.cpu_us_per_io.unwrap_or(f64::NAN)
                );
            }
        }
        let _ = writeln!(s, "[device.measured]");
        for (k, v) in self.measured() {
            let _ = writeln!(s, "{k} = {v:.1}");
        }
        s
    }
}

/// Runs one sweep over `depths` (stopping early when `saturating` and IOPS stop growing).
#[allow(clippy::too_many_arguments)]
fn sweep(
    dev: &mut AnyDevice,
    kind: IoKind,
    pattern: Pattern,
    io_bytes: usize,
    depths: &[usize],
    saturating: bool,
    step: Duration,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Vec<StepSummary>, String> {
    let region = dev.info().capacity_bytes;
    let mut out: Vec<StepSummary> = Vec::new();
    let mut flat = 0;
    for &qd in depths {
        let r = devio::closed_loop(dev, kind, pattern, io_bytes, region, qd, step, None, rng)?;
        let s = StepSummary::of(qd, io_bytes, &r);
        let best_so_far = best(&out, |x| x.iops);
        flat = if s.iops < best_so_far * 1.05 { flat + 1 } else { 0 };
        out.push(s);
        if saturating && flat >= 2 {
            break;
        }
    }
    Ok(out)
}

/// The queue depths of the random sweep: 1, 2, 4, … up to `max` (included when not a power of
/// two).
pub fn random_depths(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |d| Some(d * 2))
        .take_while(|d| *d <= max)
        .collect();
    if v.last() != Some(&max) && max > 0 {
        v.push(max);
    }
    v
}

/// Runs every step on `cfg.device`.
///
/// # Errors
/// Open, fill or I/O failure, as text naming the device.
pub fn probe(cfg: &ProbeConfig) -> Result<ProbeResult, String> {
    let max_qd = cfg
        .seq_queue_depths
        .iter()
        .copied()
        .chain([cfg.max_queue_depth, 8])
        .max()
        .unwrap_or(1);
    let mut dev = devio::open_any(&cfg.device, cfg.size_bytes, max_qd as u32)?;
    let capacity = dev.info().capacity_bytes;
    if capacity < cfg.seq_io_bytes as u64 {
        return Err(format!(
            "{}: {capacity} bytes is smaller than one {}-byte sequential I/O",
            cfg.device.display(),
            cfg.seq_io_bytes
        ));
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let fill = if devio::is_sparse_file(&cfg.device) {
        let r = devio::fill(&mut dev, capacity, 1 << 20, 8.min(max_qd), &mut rng)?;
        Some(StepSummary::of(8.min(max_qd), 1 << 20, &r))
    } else {
        None
    };
    let seq = |dev: &mut AnyDevice, kind, rng: &mut _| {
        sweep(
            dev,
            kind,
            Pattern::Sequential,
            cfg.seq_io_bytes,
            &cfg.seq_queue_depths,
            false,
            cfg.step,
            rng,
        )
    };
    let seq_write = seq(&mut dev, IoKind::Write, &mut rng)?;
    let seq_read = seq(&mut dev, IoKind::Read, &mut rng)?;
    let depths = random_depths(cfg.max_queue_depth);
    let rand_read = sweep(
        &mut dev,
        IoKind::Read,
        Pattern::Random,
        4096,
        &depths,
        true,
        cfg.step,
        &mut rng,
    )?;
    let rand_write = sweep(
        &mut dev,
        IoKind::Write,
        Pattern::Random,
        4096,
        &depths,
        true,
        cfg.step,
        &mut rng,
    )?;
    Ok(ProbeResult {
        device: cfg.device.display().to_string(),
        capacity_bytes: capacity,
        fill,
        seq_write,
        seq_read,
        rand_read,
        rand_write,
    })
}

/// Writes `figures` and `measured_by` into the `[device.measured]` section of device
/// `device_index` (0-based, in file order) of the profile `text`, creating the section when
/// missing and keeping everything else (other keys, comments, order) as it was. Figures are
/// rounded to one decimal.
///
/// # Errors
/// The text is not TOML, has no `[[device]]` array, or not that many devices.
pub fn update_profile(
    text: &str,
    device_index: usize,
    figures: &[(&str, f64)],
    measured_by: &str,
) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|e| format!("not TOML: {e}"))?;
    let devices = doc
        .get_mut("device")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .ok_or("the profile has no [[device]] section")?;
    let n = devices.len();
    let dev = devices
        .get_mut(device_index)
        .ok_or_else(|| format!("--device-index {device_index}: the profile has {n} [[device]] sections"))?;
    if !dev.get("measured").is_some_and(toml_edit::Item::is_table) {
        dev.insert("measured", toml_edit::Item::Table(toml_edit::Table::new()));
    }
    let m = dev["measured"].as_table_mut().expect("a table, inserted above");
    for &(k, v) in figures {
        m[k] = toml_edit::value((v * 10.0).round() / 10.0);
    }
    // Last, after the figures, whether it was there before or not.
    m.remove("measured_by");
    m.insert("measured_by", toml_edit::value(measured_by));
    Ok(doc.to_string())
}

/// Reads the profile at `path`, updates it with [`update_profile`], checks the result with the
/// node's own parser and validator, and writes it back.
///
/// # Errors
/// Read, update, validation or write failure, naming the file.
pub fn write_profile(path: &Path, device_index: usize, result: &ProbeResult, measured_by: &str) -> Result<(), String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let new =
        update_profile(&text, device_index, &result.measured(), measured_by).map_err(|e| format!("{shown}: {e}"))?;
    bolide_node::profile::HardwareProfile::from_toml(&new)
        .map_err(|e| format!("{shown}: the updated profile does not validate: {e}"))?;
    std::fs::write(path, new).map_err(|e| format!("{shown}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bolide_node::profile::HardwareProfile;

    const CI: &str = include_str!("../../hw-profiles/ci.toml");
    const LAB: &str = include_str!("../../hw-profiles/lab-2x-nvme.toml");

    fn figures() -> [(&'static str, f64); 6] {
        [
            ("seq_read_mbps", 1234.56),
            ("seq_write_mbps", 999.0),
            ("rand_read_iops", 54321.04),
            ("rand_write_iops", 12345.0),
            ("qd1_read_latency_us", 87.25),
            ("qd1_write_latency_us", 41.0),
        ]
    }

    #[test]
    fn profile_update_round_trips_through_the_node_parser() {
        let before = HardwareProfile::from_toml(CI).unwrap();
        let text = update_profile(CI, 0, &figures(), "bolide probe, test").unwrap();
        let after = HardwareProfile::from_toml(&text).unwrap();
        let m = after.devices[0].measured.as_ref().unwrap();
        assert_eq!(m.seq_read_mbps, 1234.6);
        assert_eq!(m.seq_write_mbps, 999.0);
        assert_eq!(m.rand_read_iops, 54321.0);
        assert_eq!(m.rand_write_iops, 12345.0);
        assert_eq!(m.qd1_read_latency_us, 87.3);
        assert_eq!(m.qd1_write_latency_us, 41.0);
        assert_eq!(m.measured_by, "bolide probe, test");
        // Everything else is unchanged, comments included.
        let mut expect = before.clone();
        expect.devices[0].measured = after.devices[0].measured.clone();
        assert_eq!(after, expect);
        assert!(text.contains("# 256 MiB each"), "{text}");
        assert!(text.starts_with("# CI and tests"), "{text}");
        let section = &text[text.find("[device.measured]").unwrap()..text.find("[storage]").unwrap()];
        assert!(
            section.trim_end().ends_with("measured_by = \"bolide probe, test\""),
            "{section}"
        );
        // Updating again replaces, not duplicates.
        let again = update_profile(&text, 0, &figures(), "second").unwrap();
        assert_eq!(again.matches("seq_read_mbps").count(), 1, "{again}");
        assert_eq!(
            HardwareProfile::from_toml(&again).unwrap().devices[0]
                .measured
                .as_ref()
                .unwrap()
                .measured_by,
            "second"
        );
    }

    #[test]
    fn a_missing_section_is_created_on_the_chosen_device() {
        let text = update_profile(LAB, 1, &figures(), "probe").unwrap();
        let p = HardwareProfile::from_toml(&text).unwrap();
        assert_eq!(p.devices[1].measured.as_ref().unwrap().rand_write_iops, 12345.0);
        assert_eq!(
            p.devices[0].measured,
            HardwareProfile::from_toml(LAB).unwrap().devices[0].measured,
            "device 0 untouched"
        );
        let e = update_profile(LAB, 5, &figures(), "probe").unwrap_err();
        assert!(e.contains("has 2 [[device]]"), "{e}");
        assert!(update_profile("name = \"x\"", 0, &figures(), "p").is_err());
    }

    #[test]
    fn random_depths_double_up_to_the_max() {
        assert_eq!(random_depths(64), vec![1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(random_depths(24), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(random_depths(1), vec![1]);
    }

    #[test]
    fn a_tiny_probe_on_a_temp_file_produces_every_figure() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProbeConfig {
            size_bytes: Some(16 << 20),
            step: Duration::from_millis(100),
            seq_queue_depths: vec![1, 4],
            max_queue_depth: 4,
            ..ProbeConfig::new(dir.path().join("probe.dat"))
        };
        let r = probe(&cfg).unwrap();
        assert_eq!(r.capacity_bytes, 16 << 20);
        assert!(r.fill.is_some(), "a new file is filled first");
        assert_eq!(r.seq_write.len(), 2);
        assert_eq!(r.seq_read.len(), 2);
        assert_eq!(
            r.rand_read.iter().map(|s| s.queue_depth).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert_eq!(r.rand_write.len(), 3);
        for (k, v) in r.measured() {
            assert!(v > 0.0 && v.is_finite(), "{k} = {v}");
        }
        let v = r.json();
        assert!(v["measured"]["qd1_read_latency_us"].is_number());
        assert!(v["qd1_write_p99_us"].is_number());
        assert!(r.text().contains("[device.measured]"));
        // Written into a copy of the CI profile, it validates.
        let prof = dir.path().join("ci.toml");
        std::fs::write(&prof, CI).unwrap();
        write_profile(&prof, 0, &r, "test run").unwrap();
        let p = HardwareProfile::from_toml(&std::fs::read_to_string(&prof).unwrap()).unwrap();
        assert!(p.devices[0].measured.as_ref().unwrap().rand_read_iops > 0.0);
    }
}
