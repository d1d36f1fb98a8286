//! The ring's contract: FIFO, bounds, drops, and two threads at full speed.
#![cfg(not(loom))]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bolide_ring::{channel, Consumer, Producer};
use proptest::prelude::*;

#[test]
fn fifo_full_empty() {
    let (mut tx, mut rx) = channel::<u32>(4);
    assert_eq!(tx.capacity(), 4);
    assert_eq!(rx.capacity(), 4);
    assert!(tx.is_empty() && rx.is_empty() && !tx.is_full());
    assert_eq!(rx.pop(), None);
    for i in 0..4 {
        assert_eq!(tx.push(i), Ok(()));
        assert_eq!(tx.len(), i as usize + 1);
        assert_eq!(rx.len(), i as usize + 1);
    }
    assert!(tx.is_full());
    assert_eq!(tx.push(4), Err(4), "a full ring gives the value back");
    assert_eq!(tx.len(), 4);
    for i in 0..4 {
        assert_eq!(rx.pop(), Some(i));
    }
    assert_eq!(rx.pop(), None);
    assert!(tx.is_empty() && rx.is_empty() && !tx.is_full());
}

#[test]
fn capacity_is_exact_not_rounded() {
    // 3 slots asked for: 4 are allocated, 3 usable.
    let (mut tx, mut rx) = channel::<u8>(3);
    assert_eq!(tx.capacity(), 3);
    for i in 0..3 {
        assert_eq!(tx.push(i), Ok(()));
    }
    assert!(tx.is_full());
    assert_eq!(tx.push(3), Err(3));
    assert_eq!(rx.pop(), Some(0));
    assert_eq!(tx.push(3), Ok(()));
    assert_eq!(tx.push(4), Err(4));
    assert_eq!(
        (rx.pop(), rx.pop(), rx.pop(), rx.pop()),
        (Some(1), Some(2), Some(3), None)
    );
}

#[test]
fn capacity_one() {
    let (mut tx, mut rx) = channel::<String>(1);
    for round in 0..10 {
        let s = format!("m{round}");
        assert_eq!(tx.push(s.clone()), Ok(()));
        assert_eq!(tx.push("x".into()), Err("x".into()));
        assert_eq!(rx.pop(), Some(s));
        assert_eq!(rx.pop(), None);
    }
}

#[test]
fn wraparound_many_times_at_every_fill_level() {
    // Sizes that are and are not powers of two, filled to every level, around the slot array
    // many times, so every slot index and every head/tail offset is exercised.
    for cap in [1, 2, 3, 5, 8, 13] {
        let (mut tx, mut rx) = channel::<u64>(cap);
        let (mut next_in, mut next_out) = (0u64, 0u64);
        for fill in 1..=cap {
            for _ in 0..(3 * cap + 1) {
                while tx.len() < fill {
                    assert_eq!(tx.push(next_in), Ok(()));
                    next_in += 1;
                }
                assert_eq!(rx.pop(), Some(next_out));
                next_out += 1;
            }
        }
        while let Some(v) = rx.pop() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > 3 * cap as u64, "went around the slot array several times");
    }
}

#[test]
#[should_panic(expected = "capacity must be at least 1")]
fn capacity_zero_panics() {
    let _ = channel::<u8>(0);
}

#[test]
#[should_panic(expected = "is too large")]
fn capacity_past_a_power_of_two_of_usize_panics() {
    let _ = channel::<()>(usize::MAX);
}

#[test]
fn zero_sized_items() {
    let (mut tx, mut rx) = channel::<()>(5);
    for _ in 0..5 {
        assert_eq!(tx.push(()), Ok(()));
    }
    assert_eq!(tx.push(()), Err(()));
    assert_eq!(rx.len(), 5);
    for _ in 0..5 {
        assert_eq!(rx.pop(), Some(()));
    }
    assert_eq!(rx.pop(), None);
}

#[test]
fn ends_are_send_and_debug() {
    fn send<S: Send>(_: &S) {}
    let (tx, rx) = channel::<Vec<u8>>(2);
    send(&tx);
    send(&rx);
    assert_eq!(format!("{tx:?}"), "Producer { len: 0, capacity: 2 }");
    assert_eq!(format!("{rx:?}"), "Consumer { len: 0, capacity: 2 }");
}

/// An item that counts its drops, per id, so a double drop and a leak are both caught.
struct Counted {
    id: usize,
    drops: Arc<Vec<AtomicUsize>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, Ordering::Relaxed);
    }
}

fn counters(n: usize) -> Arc<Vec<AtomicUsize>> {
    Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect())
}

fn assert_each_dropped_once(drops: &[AtomicUsize]) {
    for (id, d) in drops.iter().enumerate() {
        assert_eq!(
            d.load(Ordering::Relaxed),
            1,
            "item {id} dropped the wrong number of times"
        );
    }
}

/// Pushes `n` counted items through a ring of `cap` (popping, so dropping, the oldest whenever it
/// is full: many trips around the slot array), pops down to `keep` items, then drops the two ends
/// with those items inside, the producer first or last.
fn drop_run(cap: usize, n: usize, keep: usize, producer_first: bool) {
    let drops = counters(n);
    let (mut tx, mut rx) = channel(cap);
    for id in 0..n {
        let mut c = Counted {
            id,
            drops: Arc::clone(&drops),
        };
        while let Err(back) = tx.push(c) {
            c = back;
            drop(rx.pop().expect("a full ring has an item"));
        }
    }
    while rx.len() > keep {
        drop(rx.pop());
    }
    assert_eq!(rx.len(), keep.min(cap));
    if producer_first {
        drop(tx);
        drop(rx);
    } else {
        drop(rx);
        drop(tx);
    }
    assert_each_dropped_once(&drops);
}

#[test]
fn every_item_dropped_exactly_once() {
    for cap in [1, 3, 4, 7] {
        for producer_first in [true, false] {
            for keep in [0, 1, cap] {
                drop_run(cap, if cfg!(miri) { 40 } else { 1000 }, keep, producer_first);
            }
        }
    }
}

#[test]
fn refused_push_hands_the_item_back_undropped() {
    let drops = counters(2);
    let (mut tx, rx) = channel(1);
    tx.push(Counted {
        id: 0,
        drops: Arc::clone(&drops),
    })
    .ok()
    .unwrap();
    let back = tx
        .push(Counted {
            id: 1,
            drops: Arc::clone(&drops),
        })
        .err()
        .unwrap();
    assert_eq!(back.id, 1);
    assert_eq!(drops[1].load(Ordering::Relaxed), 0);
    drop(back);
    drop((tx, rx));
    assert_each_dropped_once(&drops);
}

#[test]
fn item_dropped_on_another_thread_when_the_last_end_goes_there() {
    let drops = counters(3);
    let (mut tx, rx) = channel(4);
    for id in 0..3 {
        tx.push(Counted {
            id,
            drops: Arc::clone(&drops),
        })
        .ok()
        .unwrap();
    }
    std::thread::spawn(move || drop(rx)).join().unwrap();
    assert_eq!(drops[0].load(Ordering::Relaxed), 0, "producer still holds the ring");
    std::thread::spawn(move || drop(tx)).join().unwrap();
    assert_each_dropped_once(&drops);
}

/// Waits after a failed push or pop: spins briefly, then yields, so the two threads still make
/// progress when the machine has fewer free cores than runnable threads.
fn backoff(failures: &mut u32) {
    *failures += 1;
    if failures.is_multiple_of(64) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

/// Items per stress run: millions with optimisation, fewer in an unoptimised or Miri build.
fn stress_items() -> u64 {
    if cfg!(miri) {
        2_000
    } else if cfg!(debug_assertions) {
        // The test profile (opt-level 1, debug assertions on): about a second on two cores.
        2_000_000
    } else {
        5_000_000
    }
}

fn stress(cap: usize, n: u64) {
    let (mut tx, mut rx): (Producer<u64>, Consumer<u64>) = channel(cap);
    let producer = std::thread::spawn(move || {
        let mut full = 0u64;
        for mut v in 0..n {
            let mut failures = 0;
            while let Err(back) = tx.push(v) {
                v = back;
                full += 1;
                backoff(&mut failures);
            }
        }
        full
    });
    let mut expected = 0u64;
    let mut empty = 0u64;
    let mut failures = 0;
    while expected < n {
        match rx.pop() {
            Some(v) => {
                assert_eq!(v, expected, "out of order or duplicated");
                expected += 1;
                failures = 0;
            }
            None => {
                empty += 1;
                backoff(&mut failures);
            }
        }
    }
    let full = producer.join().unwrap();
    assert_eq!(rx.pop(), None, "more items than pushed");
    // Both ends raced: report how often each found the other's side (useful when it hangs).
    eprintln!("stress cap {cap}: {n} items, push found full {full}x, pop found empty {empty}x");
}

#[test]
fn two_threads_strict_sequence_small_ring() {
    // A tiny ring forces constant full/empty transitions, i.e. cached-index reloads.
    stress(3, stress_items() / 4);
}

#[test]
fn two_threads_strict_sequence() {
    stress(1024, stress_items());
}

#[test]
fn two_threads_every_boxed_item_arrives_and_is_freed_once() {
    // Heap items across threads: a lost or duplicated publish shows as a wrong value, a double
    // free (under the allocator's checks or Miri), or a leak in the drop count.
    let n = (stress_items() / 20) as usize;
    let drops = counters(n);
    let (mut tx, mut rx) = channel(16);
    let d = Arc::clone(&drops);
    let producer = std::thread::spawn(move || {
        for id in 0..n {
            let mut c = Box::new(Counted {
                id,
                drops: Arc::clone(&d),
            });
            let mut failures = 0;
            while let Err(back) = tx.push(c) {
                c = back;
                backoff(&mut failures);
            }
        }
    });
    let mut expected = 0;
    let mut failures = 0;
    while expected < n {
        if let Some(c) = rx.pop() {
            assert_eq!(c.id, expected);
            expected += 1;
        } else {
            backoff(&mut failures);
        }
    }
    producer.join().unwrap();
    assert_each_dropped_once(&drops);
}

#[derive(Debug, Clone)]
enum Op {
    Push,
    Pop,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![Just(Op::Push), Just(Op::Pop)]
}

proptest! {
    // Regressions would be written beside a lib.rs, which an integration test has not: a failure
    // prints its minimal case instead; add it as a plain test.
    // Miri runs a few cases only: it is ~1000x slower.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        cases: if cfg!(miri) { 4 } else { 256 },
        ..ProptestConfig::default()
    })]

    /// Any sequence of pushes and pops behaves as a `VecDeque` bounded at `capacity`.
    #[test]
    fn behaves_like_a_bounded_vecdeque(cap in 1usize..20, ops in prop::collection::vec(op(), 0..400)) {
        let pushes = ops.iter().filter(|op| matches!(op, Op::Push)).count();
        let drops = counters(pushes);
        let (mut tx, mut rx) = channel(cap);
        let mut model: VecDeque<usize> = VecDeque::new();
        let mut id = 0;
        for op in &ops {
            match op {
                Op::Push => {
                    let r = tx.push(Counted { id, drops: Arc::clone(&drops) });
                    if model.len() < cap {
                        prop_assert!(r.is_ok());
                        model.push_back(id);
                    } else {
                        let back = r.expect_err("full ring refuses");
                        prop_assert_eq!(back.id, id);
                    }
                    id += 1;
                }
                Op::Pop => {
                    let got = rx.pop().map(|c| c.id);
                    prop_assert_eq!(got, model.pop_front());
                }
            }
            prop_assert_eq!(tx.len(), model.len());
            prop_assert_eq!(rx.len(), model.len());
            prop_assert_eq!(tx.is_full(), model.len() == cap);
            prop_assert_eq!(rx.is_empty(), model.is_empty());
        }
        drop((tx, rx));
        // Each item was made once: pushed and popped, pushed and left inside, or refused and
        // given back; each path drops it exactly once.
        assert_each_dropped_once(&drops);
    }
}
