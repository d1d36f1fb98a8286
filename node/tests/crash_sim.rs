//! Deterministic crash-recovery simulation (`DESIGN.md`, testing pyramid level 2).
//!
//! Each seed drives one shard on the simulated device through random puts (some with TTLs),
//! deletes and reads with random I/O latency, then crashes it (in-flight writes lost, applied
//! or torn at sector granularity) or shuts it down cleanly, reboots, and checks every key against
//! a model:
//!
//! * with `commit_to_device`, every acknowledged write is readable (or a later write of it);
//! * without it, only writes acknowledged within the flush window before the crash may be lost;
//! * no corrupt record is ever returned, deleted stays deleted, expired stays gone.
//!
//! `BOLIDE_SIM_SEEDS=N` runs N seeds per mode (default 1,000, so 2,000 runs in all);
//! `BOLIDE_SIM_SEED=S` runs only seed S (to reproduce a failure).

mod common;

use bolide_drivers::sim::{SimConfig, SimDevice};
use bolide_node::clock::{Clock, ManualClock};
use bolide_node::config::StorageConfig;
use bolide_node::shard::{Event, OpenMode, ReadAck, ReadError, WriteError};
use common::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

const CAP: u64 = 4 << 20; // 32 wblocks of 128 KiB
const READ_TOKEN: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Absent,
    Val { version: u32, void_time: u32 },
}

impl State {
    fn at(self, now_s: u32) -> State {
        match self {
            // Expired once void_time < now (whole seconds, as Aerospike; `shard::is_expired`).
            State::Val { void_time, .. } if void_time != 0 && void_time < now_s => State::Absent,
            s => s,
        }
    }
}

#[derive(Clone, Debug)]
struct Ver {
    state: State,
    acked_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct Key {
    /// State at the start of the cycle (what the last reboot showed); durable.
    base: State,
    vers: Vec<Ver>,
}

impl Key {
    fn latest(&self) -> State {
        self.vers.last().map_or(self.base, |v| v.state)
    }

    /// States a reboot may show, given the crash time and the window in which acknowledged
    /// writes may be lost (0 with commit_to_device or a clean shutdown).
    fn allowed(&self, crash_ms: u64, window_ms: u64, clean: bool) -> Vec<State> {
        if clean {
            return vec![self.latest()];
        }
        // The newest write that must have survived.
        let sure = self
            .vers
            .iter()
            .rposition(|v| v.acked_ms.is_some_and(|a| a + window_ms <= crash_ms));
        let mut out = vec![match sure {
            Some(i) => self.vers[i].state,
            None => self.base,
        }];
        let from = sure.map_or(0, |i| i + 1);
        out.extend(self.vers[from..].iter().map(|v| v.state));
        out
    }
}

struct Run {
    seed: u64,
    commit: bool,
    rng: ChaCha8Rng,
    clock: ManualClock,
    keys: Vec<Key>,
    next_version: u32,
    reads: HashMap<u64, (u32, usize, u32)>,
    next_read: u64,
    cov: Coverage,
}

/// What the seeds exercised, summed; the test fails if a large run missed a mechanism.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    runs: u64,
    cold_starts: u64,
    fast_restarts: u64,
    wblocks_freed: u64,
    tombstones_dropped: u64,
    tombstones_rewritten: u64,
    expired: u64,
    corrupt_dropped: u64,
    /// Keys that came back older than the newest write issued before the crash (a lost
    /// unacknowledged write, or without commit_to_device a write inside the flush window).
    came_back_older: u64,
    reads_device: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        self.runs += o.runs;
        self.cold_starts += o.cold_starts;
        self.fast_restarts += o.fast_restarts;
        self.wblocks_freed += o.wblocks_freed;
        self.tombstones_dropped += o.tombstones_dropped;
        self.tombstones_rewritten += o.tombstones_rewritten;
        self.expired += o.expired;
        self.corrupt_dropped += o.corrupt_dropped;
        self.came_back_older += o.came_back_older;
        self.reads_device += o.reads_device;
    }
}

impl Run {
    fn cfg(&self) -> StorageConfig {
        small_cfg(self.commit)
    }

    /// `issued_s`: the clock when the read was issued; a record that expires while its device
    /// read is in flight may still be returned.
    fn check_read(
        &self,
        k: u32,
        from_ver: usize,
        issued_s: u32,
        result: Result<bolide_node::record::Record, ReadError>,
    ) {
        let key = &self.keys[k as usize];
        let now_s = self.clock.now_cl_s();
        // A read may see the state current when it was issued or any later write.
        let mut ok: Vec<State> = vec![if from_ver == 0 {
            key.base
        } else {
            key.vers[from_ver - 1].state
        }];
        ok.extend(key.vers[from_ver..].iter().map(|v| v.state));
        let ok: Vec<State> = ok
            .iter()
            .map(|s| s.at(now_s))
            .chain(ok.iter().map(|s| s.at(issued_s)))
            .collect();
        match result {
            Ok(rec) => {
                let (rk, v) = check_rec(&rec);
                assert_eq!(rk, k, "seed {}: read of key {k} returned key {rk}", self.seed);
                assert!(
                    ok.iter()
                        .any(|s| matches!(s, State::Val { version, .. } if *version == v)),
                    "seed {}: key {k} read version {v} (void-time {}, now {now_s}), allowed {ok:?}; history {key:?}",
                    self.seed,
                    rec.meta.void_time
                );
            }
            Err(ReadError::NotFound) => assert!(
                ok.contains(&State::Absent),
                "seed {}: key {k} not found, allowed {ok:?}",
                self.seed
            ),
            Err(e) => panic!("seed {}: key {k} read failed during the run: {e}", self.seed),
        }
    }

    fn handle(&mut self, events: &mut Vec<Event>) {
        let now = self.clock.mono_ms();
        for e in events.drain(..) {
            match e {
                Event::WriteDone { token, result } => {
                    assert_eq!(result, Ok(()), "seed {}: write failed without faults", self.seed);
                    let (k, i) = ((token >> 32) as usize, (token & 0xFFFF_FFFF) as usize);
                    let v = &mut self.keys[k].vers[i];
                    assert!(v.acked_ms.is_none(), "seed {}: double acknowledgement", self.seed);
                    v.acked_ms = Some(now);
                }
                Event::ReadDone { token, result } => {
                    let (k, from, issued_s) = self.reads.remove(&token).expect("known read token");
                    self.check_read(k, from, issued_s, result);
                }
            }
        }
    }

    fn step(&mut self, shard: &mut SimShard, events: &mut Vec<Event>) {
        self.clock.advance_ms(self.rng.gen_range(0..20));
        let k = self.rng.gen_range(0..self.keys.len() as u32);
        let now_s = self.clock.now_cl_s();
        let op = self.rng.gen_range(0..100);
        if op < 65 {
            self.next_version += 1;
            let version = self.next_version;
            let void_time = if self.rng.gen_bool(0.1) {
                now_s + self.rng.gen_range(1..4)
            } else {
                0
            };
            let pad = self.rng.gen_range(0..3000);
            let token = (k as u64) << 32 | self.keys[k as usize].vers.len() as u64;
            match shard.put(put_rec(k, version, pad, void_time), token) {
                Ok(w) => {
                    let acked = if w.pending { None } else { Some(self.clock.mono_ms()) };
                    self.keys[k as usize].vers.push(Ver {
                        state: State::Val { version, void_time },
                        acked_ms: acked,
                    });
                }
                Err(WriteError::Overload(_)) | Err(WriteError::OutOfSpace) => shard.wait(events),
                Err(e) => panic!("seed {}: put failed: {e}", self.seed),
            }
        } else if op < 80 {
            let token = (k as u64) << 32 | self.keys[k as usize].vers.len() as u64;
            let live = self.keys[k as usize].latest().at(now_s) != State::Absent;
            match shard.delete(&digest_of(k), token) {
                Ok(w) => {
                    assert!(
                        live,
                        "seed {}: deleted key {k} that the model says is absent",
                        self.seed
                    );
                    let acked = if w.pending { None } else { Some(self.clock.mono_ms()) };
                    self.keys[k as usize].vers.push(Ver {
                        state: State::Absent,
                        acked_ms: acked,
                    });
                }
                Err(WriteError::NotFound) => {
                    assert!(!live, "seed {}: delete of live key {k} said not found", self.seed)
                }
                Err(WriteError::Overload(_)) | Err(WriteError::OutOfSpace) => shard.wait(events),
                Err(e) => panic!("seed {}: delete failed: {e}", self.seed),
            }
        } else {
            self.next_read += 1;
            let token = READ_TOKEN | self.next_read;
            let from = self.keys[k as usize].vers.len();
            match shard.get(&digest_of(k), token) {
                Ok(ReadAck::Done(rec)) => self.check_read(k, from, now_s, Ok(rec)),
                Ok(ReadAck::Pending) => {
                    self.reads.insert(token, (k, from, now_s));
                }
                Err(ReadError::Overload) => shard.wait(events),
                Err(e) => self.check_read(k, from, now_s, Err(e)),
            }
        }
        shard.poll(events);
        self.handle(events);
    }

    /// Reboots onto `disk` and checks every key; returns the new shard.
    fn verify(&mut self, dev: SimDevice, crash_ms: u64, clean: bool) -> SimShard {
        let window_ms = if self.commit { 0 } else { self.cfg().flush_max_ms + 400 };
        self.clock.advance_ms(self.rng.gen_range(0..3000));
        let (mut shard, report) = open_sim(dev, &self.clock, self.cfg());
        self.cov.corrupt_dropped += report.corrupt_dropped;
        match report.mode {
            OpenMode::FastRestart => self.cov.fast_restarts += 1,
            OpenMode::ColdStart => self.cov.cold_starts += 1,
            OpenMode::Formatted => panic!("seed {}: reboot formatted the region", self.seed),
        }
        if clean {
            assert_eq!(report.mode, OpenMode::FastRestart, "seed {}: {report:?}", self.seed);
        }
        let now_s = self.clock.now_cl_s();
        for k in 0..self.keys.len() as u32 {
            let key = &self.keys[k as usize];
            let allowed: Vec<State> = key.allowed(crash_ms, window_ms, clean);
            let allowed_now: Vec<State> = allowed.iter().map(|s| s.at(now_s)).collect();
            let seen = match shard.get_blocking(&digest_of(k)) {
                Ok(rec) => {
                    let (rk, v) = check_rec(&rec);
                    assert_eq!(rk, k);
                    let i = allowed_now
                        .iter()
                        .position(|s| matches!(s, State::Val { version, .. } if *version == v));
                    let i = i.unwrap_or_else(|| panic!("seed {} commit {}: key {k} came back as version {v}; allowed {allowed_now:?}; history {key:?}", self.seed, self.commit));
                    if allowed_now[i] != key.latest().at(now_s) && key.vers.iter().any(|v| v.acked_ms.is_some()) {
                        self.cov.came_back_older += 1;
                    }
                    allowed_now[i]
                }
                Err(ReadError::NotFound) => {
                    assert!(
                        allowed_now.contains(&State::Absent),
                        "seed {} commit {}: key {k} lost; allowed {allowed_now:?}; history {key:?}",
                        self.seed,
                        self.commit
                    );
                    assert!(
                        shard.peek(&digest_of(k)).is_none(),
                        "seed {}: index says key {k} is live but the read says absent",
                        self.seed
                    );
                    State::Absent
                }
                Err(e) => panic!("seed {}: key {k} read failed after reboot: {e}", self.seed),
            };
            self.keys[k as usize] = Key {
                base: seen,
                vers: Vec::new(),
            };
        }
        shard
    }
}

fn run_seed(seed: u64, commit: bool) -> Coverage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ if commit { 0xC0 } else { 0 });
    let n_keys = rng.gen_range(16..200);
    let clock = ManualClock::new(START_CL_MS);
    let mut run = Run {
        seed,
        commit,
        rng,
        clock: clock.clone(),
        keys: vec![
            Key {
                base: State::Absent,
                vers: Vec::new()
            };
            n_keys
        ],
        next_version: 0,
        reads: HashMap::new(),
        next_read: 0,
        cov: Coverage {
            runs: 1,
            ..Coverage::default()
        },
    };
    let sim_cfg = |rng: &mut ChaCha8Rng| {
        let mut c = SimConfig::new("sim0", CAP, rng.gen());
        c.latency_polls_max = rng.gen_range(0..6);
        c
    };
    let cfg0 = sim_cfg(&mut run.rng);
    let (mut shard, _) = open_sim(SimDevice::new(cfg0), &clock, run.cfg());
    let cycles = run.rng.gen_range(1..=3);
    for _ in 0..cycles {
        let mut events = Vec::new();
        let steps = run.rng.gen_range(20..400);
        for _ in 0..steps {
            run.step(&mut shard, &mut events);
        }
        let crash_ms = clock.mono_ms();
        let st = shard.stats().clone();
        run.cov.wblocks_freed += st.wblocks_freed;
        run.cov.tombstones_dropped += st.tombstones_dropped;
        run.cov.tombstones_rewritten += st.tombstones_rewritten;
        run.cov.expired += st.expired;
        run.cov.reads_device += st.reads_device;
        let clean = run.rng.gen_bool(0.15);
        run.reads.clear();
        let disk = if clean {
            let (_, dev) = shard.shutdown().expect("clean shutdown");
            dev.crash()
        } else {
            shard.into_device().crash()
        };
        let cfg = sim_cfg(&mut run.rng);
        shard = run.verify(SimDevice::from_disk(disk, cfg), crash_ms, clean);
    }
    run.cov
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("BOLIDE_SIM_SEED") {
        return vec![s.parse().expect("BOLIDE_SIM_SEED is a number")];
    }
    let n: u64 = std::env::var("BOLIDE_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (0..n).collect()
}

fn run_all(commit: bool) {
    let seeds = seeds();
    let mut cov = Coverage::default();
    for &seed in &seeds {
        cov.add(&run_seed(seed, commit));
    }
    eprintln!("commit_to_device={commit}: {cov:?}");
    if seeds.len() >= 200 {
        // A run this large must have exercised every mechanism; if not, the simulation has
        // stopped testing what it claims to.
        assert!(cov.cold_starts > 0 && cov.fast_restarts > 0, "{cov:?}");
        assert!(
            cov.wblocks_freed > 0 && cov.tombstones_dropped > 0 && cov.tombstones_rewritten > 0,
            "{cov:?}"
        );
        assert!(cov.expired > 0 && cov.reads_device > 0, "{cov:?}");
        if !commit {
            assert!(cov.came_back_older > 0, "no crash ever hit the flush window: {cov:?}");
        }
    }
}

#[test]
fn crash_recovery_with_commit_to_device() {
    run_all(true);
}

#[test]
fn crash_recovery_without_commit_to_device() {
    run_all(false);
}
