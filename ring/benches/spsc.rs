//! `bolide_ring` against `crossbeam_queue::ArrayQueue` (the ring Bolide used before), between
//! two threads:
//!
//! - `throughput`: one thread pushes a stream of `u64`s through a 1024-item ring, the other pops
//!   them; time per item.
//! - `ping_pong`: a message goes to an echo thread and back over two 1-item rings; time per round
//!   trip (two one-way hand-offs).
//! - `one_thread`: 512 pushes then 512 pops on one thread, time per item: the instruction path
//!   alone, without cache-line transfers or the scheduler (the figure that stays meaningful on a
//!   loaded machine).
//!
//! `cargo bench -p bolide-ring --bench spsc`. Under `cargo test --benches` each runs once.
//! A failed push or pop spins, and yields every 64 failures so a loaded machine still progresses;
//! both queues wait the same way.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;

/// The two ends of a bounded queue of `u64`s, one per thread.
trait Queue {
    type Tx: Send + 'static;
    type Rx: Send + 'static;
    const NAME: &'static str;
    fn make(capacity: usize) -> (Self::Tx, Self::Rx);
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64>;
    fn pop(rx: &mut Self::Rx) -> Option<u64>;
}

struct BolideRing;

impl Queue for BolideRing {
    type Tx = bolide_ring::Producer<u64>;
    type Rx = bolide_ring::Consumer<u64>;
    const NAME: &'static str = "bolide_ring";
    fn make(capacity: usize) -> (Self::Tx, Self::Rx) {
        bolide_ring::channel(capacity)
    }
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v)
    }
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }
}

struct CrossbeamArrayQueue;

impl Queue for CrossbeamArrayQueue {
    type Tx = Arc<ArrayQueue<u64>>;
    type Rx = Arc<ArrayQueue<u64>>;
    const NAME: &'static str = "crossbeam_array_queue";
    fn make(capacity: usize) -> (Self::Tx, Self::Rx) {
        let q = Arc::new(ArrayQueue::new(capacity));
        (Arc::clone(&q), q)
    }
    fn push(tx: &mut Self::Tx, v: u64) -> Result<(), u64> {
        tx.push(v)
    }
    fn pop(rx: &mut Self::Rx) -> Option<u64> {
        rx.pop()
    }
}

fn backoff(failures: &mut u32) {
    *failures += 1;
    if failures.is_multiple_of(64) {
        thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

fn push_blocking<Q: Queue>(tx: &mut Q::Tx, mut v: u64) {
    let mut failures = 0;
    while let Err(back) = Q::push(tx, v) {
        v = back;
        backoff(&mut failures);
    }
}

fn pop_blocking<Q: Queue>(rx: &mut Q::Rx) -> u64 {
    let mut failures = 0;
    loop {
        if let Some(v) = Q::pop(rx) {
            return v;
        }
        backoff(&mut failures);
    }
}

/// Streams `n` items from a spawned producer to this thread; the time from spawn to the last pop.
fn stream<Q: Queue>(n: u64) -> Duration {
    let (mut tx, mut rx) = Q::make(1024);
    let start = Instant::now();
    let producer = thread::spawn(move || {
        for v in 0..n {
            push_blocking::<Q>(&mut tx, v);
        }
    });
    for expected in 0..n {
        let v = pop_blocking::<Q>(&mut rx);
        debug_assert_eq!(v, expected);
    }
    let elapsed = start.elapsed();
    producer.join().expect("producer");
    elapsed
}

/// `n` round trips to an echo thread over two 1-item rings.
fn ping_pong<Q: Queue>(n: u64) -> Duration {
    let (mut ping_tx, mut ping_rx) = Q::make(1);
    let (mut pong_tx, mut pong_rx) = Q::make(1);
    let echo = thread::spawn(move || {
        for _ in 0..n {
            let v = pop_blocking::<Q>(&mut ping_rx);
            push_blocking::<Q>(&mut pong_tx, v);
        }
    });
    let start = Instant::now();
    for v in 0..n {
        push_blocking::<Q>(&mut ping_tx, v);
        let back = pop_blocking::<Q>(&mut pong_rx);
        debug_assert_eq!(back, v);
    }
    let elapsed = start.elapsed();
    echo.join().expect("echo");
    elapsed
}

/// `n` items pushed and popped on this thread, 512 at a time through a 512-item ring.
fn one_thread<Q: Queue>(n: u64) -> Duration {
    const BATCH: u64 = 512;
    let (mut tx, mut rx) = Q::make(BATCH as usize);
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let batch = BATCH.min(n - done);
        for v in 0..batch {
            assert!(Q::push(&mut tx, std::hint::black_box(v)).is_ok());
        }
        for _ in 0..batch {
            std::hint::black_box(Q::pop(&mut rx));
        }
        done += batch;
    }
    start.elapsed()
}

fn single_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc/one_thread");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter(BolideRing::NAME), |b| {
        b.iter_custom(one_thread::<BolideRing>)
    });
    g.bench_function(BenchmarkId::from_parameter(CrossbeamArrayQueue::NAME), |b| {
        b.iter_custom(one_thread::<CrossbeamArrayQueue>)
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc/throughput");
    g.throughput(Throughput::Elements(1));
    g.bench_function(BenchmarkId::from_parameter(BolideRing::NAME), |b| {
        b.iter_custom(stream::<BolideRing>)
    });
    g.bench_function(BenchmarkId::from_parameter(CrossbeamArrayQueue::NAME), |b| {
        b.iter_custom(stream::<CrossbeamArrayQueue>)
    });
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("spsc/ping_pong");
    g.bench_function(BenchmarkId::from_parameter(BolideRing::NAME), |b| {
        b.iter_custom(ping_pong::<BolideRing>)
    });
    g.bench_function(BenchmarkId::from_parameter(CrossbeamArrayQueue::NAME), |b| {
        b.iter_custom(ping_pong::<CrossbeamArrayQueue>)
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = single_thread, throughput, round_trip
}
criterion_main!(benches);
