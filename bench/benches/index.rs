//! Criterion micro-benchmarks of the primary index at 1 M records (random digests, spread over
//! all 4096 partitions, ≈ 244 per partition).
//!
//! ```text
//! cargo bench -p bolide-bench --bench index            # measure
//! cargo bench -p bolide-bench --bench index -- --test  # run each once (seconds)
//! ```

use bolide_bench::{entry_for, random_digest};
use bolide_node::digest::{Digest, PartitionId, N_PARTITIONS};
use bolide_node::index::PrimaryIndex;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Records in the index under test.
const RECORDS: usize = 1_000_000;
/// Fresh digests inserted per timed batch in the insert benchmark (then removed, untimed).
const INSERT_BATCH: usize = 10_000;
/// Records bulk-loaded per iteration of the push_sorted benchmark.
const PUSH_RECORDS: usize = 100_000;

/// `n` distinct random digests in digest order.
fn sorted_digests(rng: &mut ChaCha8Rng, n: usize) -> Vec<Digest> {
    let mut ds: Vec<Digest> = (0..n).map(|_| random_digest(rng)).collect();
    ds.sort_unstable();
    ds.dedup();
    ds
}

fn bench_index(c: &mut Criterion) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let sorted = sorted_digests(&mut rng, RECORDS);
    let mut ix = PrimaryIndex::new();
    for (i, &d) in sorted.iter().enumerate() {
        ix.push_sorted(entry_for(d, i));
    }
    // Random inserts after the load leave chunks at their steady-state fill.
    let mut present = sorted;
    present.shuffle(&mut rng);
    for (i, d) in present.iter_mut().enumerate().step_by(4) {
        ix.remove(d);
        *d = random_digest(&mut rng);
        ix.insert(entry_for(*d, i));
    }
    let absent: Vec<Digest> = (0..100_000).map(|_| random_digest(&mut rng)).collect();

    let mut g = c.benchmark_group("index_1M");
    g.throughput(Throughput::Elements(1));

    g.bench_function("insert", |b| {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let k = left.min(INSERT_BATCH);
                let fresh: Vec<Digest> = (0..k).map(|_| random_digest(&mut rng)).collect();
                let t = Instant::now();
                for (i, &d) in fresh.iter().enumerate() {
                    black_box(ix.insert(entry_for(d, i)));
                }
                spent += t.elapsed();
                for d in &fresh {
                    ix.remove(d);
                }
                left -= k;
            }
            spent
        })
    });

    let mut i = 0;
    g.bench_function("get_hit", |b| {
        b.iter(|| {
            i = (i + 1) % present.len();
            black_box(ix.get(&present[i]))
        })
    });

    let mut i = 0;
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            i = (i + 1) % absent.len();
            black_box(ix.get(&absent[i]))
        })
    });

    let mut i = 0;
    g.bench_function("remove_reinsert", |b| {
        b.iter(|| {
            i = (i + 1) % present.len();
            let e = ix.remove(&present[i]).expect("present");
            black_box(ix.insert(e))
        })
    });

    let per_partition = (RECORDS / N_PARTITIONS) as u64;
    g.throughput(Throughput::Elements(per_partition));
    let mut pid = 0u16;
    g.bench_function("scan_partition", |b| {
        b.iter(|| {
            pid = (pid + 1) % N_PARTITIONS as u16;
            let mut bytes = 0usize;
            for e in ix.iter_partition_after(PartitionId(pid), None) {
                bytes += e.size_bytes();
            }
            black_box(bytes)
        })
    });
    // Resuming at the middle digest of a partition scans about half of it.
    g.throughput(Throughput::Elements(per_partition / 2));
    g.bench_function("scan_partition_resume_middle", |b| {
        b.iter(|| {
            pid = (pid + 1) % N_PARTITIONS as u16;
            let mut after = [0x80u8; 20];
            after[0] = pid as u8;
            after[1] = 0x80 | (pid >> 8) as u8;
            let mut bytes = 0usize;
            for e in ix.iter_partition_after(PartitionId(pid), Some(&Digest(after))) {
                bytes += e.size_bytes();
            }
            black_box(bytes)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("index_bulk_load");
    g.throughput(Throughput::Elements(PUSH_RECORDS as u64));
    g.sample_size(20);
    let load = sorted_digests(&mut rng, PUSH_RECORDS);
    g.bench_function("push_sorted_100k", |b| {
        b.iter_batched(
            PrimaryIndex::new,
            |mut ix| {
                for (i, &d) in load.iter().enumerate() {
                    ix.push_sorted(entry_for(d, i));
                }
                ix
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_index
}
criterion_main!(benches);
