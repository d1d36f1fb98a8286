//! Heap per record and speed of the primary index (`bolide_node::index::PrimaryIndex`).
//!
//! Builds an index of N records with random digests twice, once by random `insert`s and once by
//! `push_sorted` in digest order (a persisted-index load), and prints one JSON object to stdout:
//! the heap the index holds as counted by a wrapping global allocator and as reported by
//! `heap_bytes()`, bytes per record, ns per insert / lookup / push, the same after churn, and the
//! machine. Run in release:
//!
//! ```text
//! cargo run --release -p bolide-bench --bin index_mem -- --records 10000000
//! ```
//!
//! Options: `--records N` (default 10,000,000), `--lookups N` (default min(N, 5,000,000)),
//! `--seed N` (default 1).

use bolide_bench::{entry_for, random_digest};
use bolide_node::digest::Digest;
use bolide_node::index::{IndexEntry, PrimaryIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Bytes currently allocated through the global allocator (requested sizes).
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// `System`, counting requested bytes.
struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is a relaxed counter update on success, which does
// not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: our caller upholds `alloc`'s contract, which is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            ALLOCATED.fetch_add(new_size, Ordering::Relaxed);
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocated() -> usize {
    ALLOCATED.load(Ordering::Relaxed)
}

/// Resident set size, bytes (0 when /proc is unavailable).
fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

struct Args {
    records: usize,
    lookups: usize,
    seed: u64,
}

fn parse_args() -> Args {
    let mut records = 10_000_000;
    let mut lookups = None;
    let mut seed = 1;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
            v.replace('_', "")
                .parse()
                .unwrap_or_else(|_| usage(&format!("{name}: not a number: {v}")))
        };
        match a.as_str() {
            "--records" => records = value("--records") as usize,
            "--lookups" => lookups = Some(value("--lookups") as usize),
            "--seed" => seed = value("--seed"),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if records == 0 {
        usage("--records must be at least 1");
    }
    Args {
        records,
        lookups: lookups.unwrap_or(records.min(5_000_000)),
        seed,
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("index_mem: {err}");
    }
    eprintln!("usage: index_mem [--records N] [--lookups N] [--seed N]");
    std::process::exit(2)
}

fn ns_per(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops.max(1) as f64
}

/// Heap figures of an index, taken while nothing but the index has been allocated since the
/// baseline (kept plain, so taking them allocates nothing).
#[derive(Clone, Copy)]
struct Memory {
    measured: usize,
    reported: usize,
    records: usize,
    chunks: usize,
}

impl Memory {
    /// `ix`'s heap: everything allocated since `baseline`, and what `heap_bytes()` says.
    fn of(ix: &PrimaryIndex, baseline: usize) -> Memory {
        Memory {
            measured: allocated() - baseline,
            reported: ix.heap_bytes(),
            records: ix.len(),
            chunks: ix.chunk_count(),
        }
    }

    fn json(&self) -> Value {
        let n = self.records.max(1) as f64;
        json!({
            "heap_bytes_measured": self.measured,
            "heap_bytes_reported": self.reported,
            "bytes_per_record_measured": round2(self.measured as f64 / n),
            "bytes_per_record_reported": round2(self.reported as f64 / n),
            "chunks": self.chunks,
            "mean_entries_per_chunk": round2(self.records as f64 / self.chunks.max(1) as f64),
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Times `lookups` random hits among `digests` and as many random (almost surely absent)
/// digests; returns ns per hit, ns per miss. Frees what it allocates.
fn time_lookups(ix: &PrimaryIndex, digests: &[Digest], lookups: usize, rng: &mut ChaCha8Rng) -> (f64, f64) {
    // Keys are read in sequence, so only the index's own cache misses are timed.
    let present: Vec<Digest> = (0..lookups).map(|_| digests[rng.gen_range(0..digests.len())]).collect();
    let t = Instant::now();
    let mut found = 0usize;
    for d in &present {
        found += usize::from(black_box(ix.get(d)).is_some());
    }
    let hit_ns = ns_per(t, lookups);
    assert_eq!(found, lookups, "a lookup of a present digest missed");
    drop(present);
    let absent: Vec<Digest> = (0..lookups).map(|_| random_digest(rng)).collect();
    let t = Instant::now();
    for d in &absent {
        black_box(ix.get(d));
    }
    (hit_ns, ns_per(t, lookups))
}

fn lookup_json(lookups: usize, (hit_ns, miss_ns): (f64, f64)) -> Value {
    json!({ "lookups": lookups, "hit_ns_per_op": round2(hit_ns), "miss_ns_per_op": round2(miss_ns) })
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(prefix))?;
    Some(line.split_once([':', '='])?.1.trim().trim_matches('"').to_string())
}

fn machine() -> Value {
    let rustc = std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": first_line_with("/proc/cpuinfo", "model name"),
        "mem_total": first_line_with("/proc/meminfo", "MemTotal"),
        "os": first_line_with("/etc/os-release", "PRETTY_NAME"),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "rustc": rustc,
        "debug_assertions": cfg!(debug_assertions),
    })
}

fn main() {
    let args = parse_args();
    let n = args.records;
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut digests: Vec<Digest> = (0..n).map(|_| random_digest(&mut rng)).collect();

    // 1. Random inserts.
    let rss0 = rss_bytes();
    let base = allocated();
    let mut ix = PrimaryIndex::new();
    let t = Instant::now();
    let mut duplicates = 0usize;
    for (i, &d) in digests.iter().enumerate() {
        duplicates += usize::from(ix.insert(entry_for(d, i)).is_some());
    }
    let insert_ns = ns_per(t, n);
    let insert_rss = rss_bytes().saturating_sub(rss0);
    let insert_mem = Memory::of(&ix, base);
    let insert_lookups = time_lookups(&ix, &digests, args.lookups, &mut rng);

    // 2. Churn: replace half the records by new ones (remove + insert); memory stays bounded.
    let churn_ops = n / 2;
    let t = Instant::now();
    for k in 0..churn_ops {
        let i = rng.gen_range(0..n);
        black_box(ix.remove(&digests[i]));
        digests[i] = random_digest(&mut rng);
        ix.insert(entry_for(digests[i], k));
    }
    let churn_ns = ns_per(t, churn_ops);
    let churn_mem = Memory::of(&ix, base);
    drop(ix);
    assert_eq!(allocated(), base, "the index freed other than it allocated");

    // 3. Bulk load in digest order.
    digests.sort_unstable();
    digests.dedup();
    let base = allocated();
    let mut ix = PrimaryIndex::new();
    let t = Instant::now();
    for (i, &d) in digests.iter().enumerate() {
        ix.push_sorted(entry_for(d, i));
    }
    let push_ns = ns_per(t, digests.len());
    let push_mem = Memory::of(&ix, base);
    let t = Instant::now();
    ix.shrink_to_fit();
    let shrink_ms = t.elapsed().as_secs_f64() * 1e3;
    let shrunk_mem = Memory::of(&ix, base);
    let push_lookups = time_lookups(&ix, &digests, args.lookups, &mut rng);
    drop(ix);
    assert_eq!(allocated(), base, "the index freed other than it allocated");

    let mut insert = insert_mem.json();
    insert["ns_per_insert"] = json!(round2(insert_ns));
    insert["duplicate_digests"] = json!(duplicates);
    insert["rss_delta_bytes"] = json!(insert_rss);
    insert["lookup"] = lookup_json(args.lookups, insert_lookups);
    let mut churn = churn_mem.json();
    churn["ops"] = json!(churn_ops);
    churn["ns_per_remove_and_insert"] = json!(round2(churn_ns));
    let mut push = push_mem.json();
    push["ns_per_push_sorted"] = json!(round2(push_ns));
    let mut shrunk = shrunk_mem.json();
    shrunk["shrink_to_fit_ms"] = json!(round2(shrink_ms));
    push["after_shrink_to_fit"] = shrunk;
    push["lookup"] = lookup_json(args.lookups, push_lookups);
    let report = json!({
        "bench": "index_mem",
        "records": n,
        "seed": args.seed,
        "entry_bytes": std::mem::size_of::<IndexEntry>(),
        "insert": insert,
        "churn": churn,
        "push_sorted": push,
        "machine": machine(),
    });
    println!("{report}");
}
