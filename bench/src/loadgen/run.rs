//! Driving a cluster through the official client: the load phase (insert every key once) and
//! the run phase (the mix, closed loop or open loop), with one progress line a second on stderr.
//!
//! Each worker is a tokio task with one request in flight at a time, so `in_flight` workers keep
//! up to `in_flight` requests (and connections: the Aerospike protocol has one request per
//! connection at a time) outstanding.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aerospike::{Bins, Client, Key, ReadPolicy, Value, WritePolicy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::keys::KeyChooser;
use super::report::{PhaseResult, ProcSample, SeriesPoint};
use super::schedule::{OpTimes, OpenLoopSchedule};
use super::stats::{new_histogram, Recorder};
use super::workload::{FixedValues, ObjectSpec, OpKind, OpMix};

/// What every operation needs: where records go and what they hold.
pub struct Target {
    /// The client, connected.
    pub client: Client,
    /// Namespace.
    pub namespace: String,
    /// Set name.
    pub set: String,
    /// Bin names, one per bin of `spec`.
    pub bin_names: Vec<String>,
    /// Record layout.
    pub spec: ObjectSpec,
    /// Values reused for every write unless `random_values`.
    pub fixed: FixedValues,
    /// asbench `-R`: new random values for every write.
    pub random_values: bool,
    /// Policy of every `get`.
    pub read_policy: ReadPolicy,
    /// Policy of every `put`.
    pub write_policy: WritePolicy,
}

/// How a phase runs.
#[derive(Clone, Debug)]
pub struct PhaseConfig {
    /// Workers, each with one request in flight.
    pub in_flight: usize,
    /// Seed of the workers' random number generators (worker `w` uses `seed + w`).
    pub seed: u64,
    /// Print a progress line on stderr each second.
    pub progress: bool,
    /// Process whose CPU time to report next to ours (the server, when on this machine).
    pub server_pid: Option<u32>,
}

/// The run phase's workload.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// Operation mix.
    pub mix: OpMix,
    /// Key distribution over the existing keys.
    pub keys: KeyChooser,
    /// First key.
    pub start_key: u64,
    /// Keys that exist when the run starts (`start_key .. start_key + loaded_keys`).
    pub loaded_keys: u64,
    /// Seconds at the start whose operations are left out of the totals.
    pub warmup_s: f64,
    /// Seconds measured after the warm-up.
    pub duration_s: f64,
    /// Open loop at this rate; `None`: closed loop, as fast as answers come.
    pub schedule: Option<OpenLoopSchedule>,
    /// YCSB E: longest scan, in records.
    pub max_scan_records: u64,
}

/// Shared by a phase's workers and its reporter.
struct Shared {
    target: Arc<Target>,
    recorder: Recorder,
    start: Instant,
    /// Load: next key index to insert. Run: next open-loop operation index.
    next_index: AtomicU64,
    /// Run: next key to insert.
    next_insert_key: AtomicU64,
    /// Run: per worker, a lower bound of the key it is inserting (`u64::MAX`: none). Keys below
    /// both `next_insert_key` and every slot have been acknowledged (YCSB's acknowledged counter).
    insert_slots: Vec<AtomicU64>,
    done: AtomicBool,
}

fn elapsed_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// The open-loop pacer: a thread of its own that releases one semaphore permit per operation at
/// its intended time (the tokio timer ticks in whole milliseconds; `std::thread::sleep` is good
/// to tens of µs), several at once when it wakes late, until the phase ends; then `in_flight`
/// more, which the workers take as "stop" (their index is past the last one due).
fn spawn_pacer(
    schedule: OpenLoopSchedule,
    start: Instant,
    end_ns: u64,
    in_flight: usize,
    permits: Arc<tokio::sync::Semaphore>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("bolide-bench-pacer".into())
        .spawn(move || {
            let mut released = 0u64;
            loop {
                let now = elapsed_ns(start).min(end_ns.saturating_sub(1));
                let mut due = released;
                while schedule.intended_ns(due) <= now {
                    due += 1;
                }
                if due > released {
                    permits.add_permits((due - released) as usize);
                    released = due;
                }
                let next = schedule.intended_ns(released);
                if next >= end_ns {
                    break;
                }
                let wait = next.saturating_sub(elapsed_ns(start));
                // At least 20 µs, so that very high rates release in batches rather than spin.
                std::thread::sleep(Duration::from_nanos(wait.max(20_000)));
            }
            permits.add_permits(in_flight);
        })
        .expect("spawn the pacer thread")
}

/// The first message seen for each result code, for the report (a code alone, such as the
/// client's "max retries exceeded", does not say what went wrong underneath).
static ERROR_EXAMPLES: std::sync::Mutex<BTreeMap<i32, String>> = std::sync::Mutex::new(BTreeMap::new());

fn error_code(e: &aerospike::Error) -> i32 {
    let code = e.result_code();
    let mut ex = ERROR_EXAMPLES.lock().expect("error examples poisoned");
    ex.entry(code)
        .or_insert_with(|| format!("{e:?}").chars().take(600).collect());
    code
}

/// One message per result code seen so far (its `Debug` form, at most 600 characters).
pub fn error_examples() -> BTreeMap<i32, String> {
    ERROR_EXAMPLES.lock().expect("error examples poisoned").clone()
}

impl Target {
    fn key(&self, k: u64) -> Key {
        Key::new(self.namespace.as_str(), self.set.as_str(), Value::Int(k as i64)).expect("integer keys are valid")
    }

    async fn get(&self, k: u64) -> Result<(), i32> {
        self.client
            .get(&self.read_policy, &self.key(k), Bins::All)
            .await
            .map(drop)
            .map_err(|e| error_code(&e))
    }

    async fn put(&self, k: u64, rng: &mut ChaCha8Rng) -> Result<(), i32> {
        let bins = self
            .spec
            .make_bins(&self.bin_names, &self.fixed, self.random_values, rng);
        self.client
            .put(&self.write_policy, &self.key(k), &bins)
            .await
            .map_err(|e| error_code(&e))
    }
}

/// Inserts keys `start_key .. start_key + count` once each, closed loop, at full speed.
pub async fn load_phase(target: Arc<Target>, cfg: &PhaseConfig, start_key: u64, count: u64) -> PhaseResult {
    let shared = Arc::new(Shared {
        target,
        recorder: Recorder::new(cfg.in_flight.clamp(1, 8), false),
        start: Instant::now(),
        next_index: AtomicU64::new(0),
        next_insert_key: AtomicU64::new(0),
        insert_slots: Vec::new(),
        done: AtomicBool::new(false),
    });
    let workers: Vec<_> = (0..cfg.in_flight)
        .map(|w| {
            let sh = shared.clone();
            let seed = cfg.seed + w as u64;
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                loop {
                    let i = sh.next_index.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let sent_ns = elapsed_ns(sh.start);
                    let result = sh.target.put(start_key + i, &mut rng).await;
                    let t = OpTimes {
                        intended_ns: sent_ns,
                        sent_ns,
                        done_ns: elapsed_ns(sh.start),
                    };
                    sh.recorder.record(w, OpKind::Insert, t, result, true);
                }
            })
        })
        .collect();
    let (series, usage) = report_until_done(&shared, workers, "load", 0.0, cfg).await;
    let wall_s = shared.start.elapsed().as_secs_f64();
    PhaseResult {
        name: "load".into(),
        measured_s: wall_s,
        warmup_s: 0.0,
        wall_s,
        target_rate_per_s: None,
        in_flight: cfg.in_flight,
        totals: shared.recorder.totals(),
        series,
        client_cpu_s: usage.client.cpu_s,
        client_runqueue_wait_s: usage.client.runqueue_wait_s,
        server_cpu_s: usage.server.map(|u| u.cpu_s),
        server_runqueue_wait_s: usage.server.map(|u| u.runqueue_wait_s),
    }
}

/// The timed run phase: `warmup_s + duration_s` seconds of the mix.
pub async fn run_phase(target: Arc<Target>, cfg: &PhaseConfig, spec: &RunSpec) -> PhaseResult {
    let first_new = spec.start_key + spec.loaded_keys;
    let shared = Arc::new(Shared {
        target,
        recorder: Recorder::new(cfg.in_flight.clamp(1, 8), spec.schedule.is_some()),
        start: Instant::now(),
        next_index: AtomicU64::new(0),
        next_insert_key: AtomicU64::new(first_new),
        insert_slots: (0..if spec.mix.inserts() { cfg.in_flight } else { 0 })
            .map(|_| AtomicU64::new(u64::MAX))
            .collect(),
        done: AtomicBool::new(false),
    });
    let warmup_ns = (spec.warmup_s * 1e9) as u64;
    let end_ns = warmup_ns + (spec.duration_s * 1e9) as u64;
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let pacer = spec
        .schedule
        .map(|s| spawn_pacer(s, shared.start, end_ns, cfg.in_flight, permits.clone()));
    let workers: Vec<_> = (0..cfg.in_flight)
        .map(|w| {
            let sh = shared.clone();
            let spec = spec.clone();
            let permits = permits.clone();
            let seed = cfg.seed + w as u64;
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                loop {
                    let now = elapsed_ns(sh.start);
                    let (intended_ns, sent_ns) = match &spec.schedule {
                        Some(s) => {
                            // Every operation due before the end is sent, late ones included:
                            // in overload the phase runs on until the backlog is drained.
                            permits.acquire().await.expect("never closed").forget();
                            let i = sh.next_index.fetch_add(1, Ordering::Relaxed);
                            let intended = s.intended_ns(i);
                            if intended >= end_ns {
                                break;
                            }
                            (intended, elapsed_ns(sh.start))
                        }
                        None if now >= end_ns => break,
                        None => (now, now),
                    };
                    let kind = spec.mix.pick(rng.gen::<f64>() * 100.0);
                    let result = one_op(&sh, &spec, kind, w, &mut rng).await;
                    let t = OpTimes {
                        intended_ns,
                        sent_ns,
                        done_ns: elapsed_ns(sh.start),
                    };
                    sh.recorder.record(w, kind, t, result, intended_ns >= warmup_ns);
                }
            })
        })
        .collect();
    let (series, usage) = report_until_done(&shared, workers, "run", spec.warmup_s, cfg).await;
    if let Some(p) = pacer {
        p.join().expect("pacer panicked");
    }
    let wall_s = shared.start.elapsed().as_secs_f64();
    PhaseResult {
        name: "run".into(),
        // Open loop in overload drains its backlog after the nominal end: throughput is taken
        // over the whole time the measured operations took.
        measured_s: if spec.schedule.is_some() {
            (wall_s - spec.warmup_s).max(spec.duration_s)
        } else {
            spec.duration_s
        },
        warmup_s: spec.warmup_s,
        wall_s,
        target_rate_per_s: spec.schedule.map(|s| s.rate_per_s()),
        in_flight: cfg.in_flight,
        totals: shared.recorder.totals(),
        series,
        client_cpu_s: usage.client.cpu_s,
        client_runqueue_wait_s: usage.client.runqueue_wait_s,
        server_cpu_s: usage.server.map(|u| u.cpu_s),
        server_runqueue_wait_s: usage.server.map(|u| u.runqueue_wait_s),
    }
}

impl Shared {
    /// One past the highest key known to exist: every key below it was loaded or its insert
    /// acknowledged.
    fn existing_end(&self) -> u64 {
        let next = self.next_insert_key.load(Ordering::SeqCst);
        self.insert_slots
            .iter()
            .map(|s| s.load(Ordering::SeqCst))
            .fold(next, u64::min)
    }
}

async fn one_op(sh: &Shared, spec: &RunSpec, kind: OpKind, worker: usize, rng: &mut ChaCha8Rng) -> Result<(), i32> {
    let t = &sh.target;
    let existing_end = || sh.existing_end();
    match kind {
        OpKind::Read => t.get(spec.keys.next_key(rng, existing_end())).await,
        OpKind::Update => t.put(spec.keys.next_key(rng, existing_end()), rng).await,
        OpKind::Insert => {
            // Publish a lower bound before claiming, so no reader sees the claimed key as existing.
            let slot = &sh.insert_slots[worker];
            slot.store(sh.next_insert_key.load(Ordering::SeqCst), Ordering::SeqCst);
            let k = sh.next_insert_key.fetch_add(1, Ordering::SeqCst);
            slot.store(k, Ordering::SeqCst);
            let r = t.put(k, rng).await;
            // A failed insert leaves a hole that reads may hit (counted as their errors).
            slot.store(u64::MAX, Ordering::SeqCst);
            r
        }
        OpKind::ReadModifyWrite => {
            let k = spec.keys.next_key(rng, existing_end());
            t.get(k).await?;
            t.put(k, rng).await
        }
        OpKind::Scan => {
            // YCSB E: a uniform length in 1..=max, consecutive keys from a chosen start.
            let end = existing_end();
            let first = spec.keys.next_key(rng, end);
            let len = rng.gen_range(1..=spec.max_scan_records);
            for k in first..(first + len).min(end) {
                t.get(k).await?;
            }
            Ok(())
        }
    }
}

/// CPU and run-queue wait over a phase: this process's, and the server's with `--server-pid`.
struct Usage {
    client: ProcSample,
    server: Option<ProcSample>,
}

fn delta(a: ProcSample, b: ProcSample) -> ProcSample {
    ProcSample {
        cpu_s: b.cpu_s - a.cpu_s,
        runqueue_wait_s: b.runqueue_wait_s - a.runqueue_wait_s,
    }
}

/// Prints a progress line each second until the workers end; returns the series and the CPU use
/// over the phase.
async fn report_until_done(
    shared: &Arc<Shared>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    phase: &'static str,
    warmup_s: f64,
    cfg: &PhaseConfig,
) -> (Vec<SeriesPoint>, Usage) {
    let server_pid = cfg.server_pid.map(|p| p.to_string());
    let sample = move || {
        (
            ProcSample::of("self").unwrap_or_default(),
            server_pid.as_deref().and_then(ProcSample::of),
        )
    };
    let first = sample();
    let sh = shared.clone();
    let progress = cfg.progress;
    let sample_in_reporter = sample.clone();
    let reporter = tokio::spawn(async move {
        let sample = sample_in_reporter;
        let mut series = Vec::new();
        let mut last_t = 0.0;
        let mut last = first;
        let mut tick = 1u64;
        loop {
            let finished = sh.done.load(Ordering::Acquire);
            if !finished {
                let at = sh.start + Duration::from_secs(tick);
                // Wake early if the phase ends between ticks.
                while Instant::now() < at && !sh.done.load(Ordering::Acquire) {
                    tokio::time::sleep(Duration::from_millis(20).min(at.saturating_duration_since(Instant::now())))
                        .await;
                }
            }
            let t_s = sh.start.elapsed().as_secs_f64();
            let interval = sh.recorder.take_interval();
            let now = sample();
            let dt = (t_s - last_t).max(1e-9);
            let mut all = new_histogram();
            for h in interval.latency.iter().flatten() {
                all.add(h).expect("same bounds");
            }
            let q = |x| {
                if all.is_empty() {
                    0.0
                } else {
                    (all.value_at_quantile(x) as f64 / 10.0).round() / 100.0
                }
            };
            let client = delta(last.0, now.0);
            let server = last.1.zip(now.1).map(|(a, b)| delta(a, b));
            let point = SeriesPoint {
                t_s,
                interval_s: dt,
                ok_per_s: std::array::from_fn(|i| interval.ok(OpKind::ALL[i]) as f64 / dt),
                failed: interval.failed,
                p50_us: q(0.5),
                p99_us: q(0.99),
                client_cpu_cores: client.cpu_s / dt,
                client_runqueue_wait: client.runqueue_wait_s / dt,
                server_cpu_cores: server.map(|s| s.cpu_s / dt),
                server_runqueue_wait: server.map(|s| s.runqueue_wait_s / dt),
                measured: last_t >= warmup_s,
            };
            if progress && (point.ok_per_s.iter().sum::<f64>() > 0.0 || point.failed > 0 || !finished) {
                eprintln!("{}", progress_line(phase, &point));
            }
            series.push(point);
            last_t = t_s;
            last = now;
            tick += 1;
            if finished {
                return series;
            }
        }
    });
    for w in workers {
        w.await.expect("worker panicked");
    }
    shared.done.store(true, Ordering::Release);
    let series = reporter.await.expect("reporter panicked");
    let end = sample();
    let usage = Usage {
        client: delta(first.0, end.0),
        server: first.1.zip(end.1).map(|(a, b)| delta(a, b)),
    };
    (series, usage)
}

/// One progress line: phase, time, throughput per kind, interval p50/p99, failures, client CPU.
pub fn progress_line(phase: &str, p: &SeriesPoint) -> String {
    let per: Vec<String> = OpKind::ALL
        .iter()
        .filter(|k| p.ok_per_s[k.index()] > 0.0)
        .map(|k| format!("{} {:.0}", k.name(), p.ok_per_s[k.index()]))
        .collect();
    format!(
        "{phase} {:>6.1}s{} {:>9.0} ops/s ({}) p50 {:.3} ms p99 {:.3} ms failed {} cpu client {:.2}{} cores, cpu wait client {:.2}{}",
        p.t_s,
        if p.measured { "" } else { " warm-up" },
        p.ok_per_s.iter().sum::<f64>(),
        per.join(", "),
        p.p50_us / 1000.0,
        p.p99_us / 1000.0,
        p.failed,
        p.client_cpu_cores,
        p.server_cpu_cores.map_or(String::new(), |c| format!(" server {c:.2}")),
        p.client_runqueue_wait,
        p.server_runqueue_wait.map_or(String::new(), |c| format!(" server {c:.2}")),
    )
}
