//! Model-checked with loom: every interleaving (up to a preemption bound) of the two ends, with
//! loom's checks that each slot access is ordered after the access before it (no data race) and
//! that nothing leaks. Not run by default:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p bolide-ring --test loom --release
//! ```
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use bolide_ring::channel;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

/// Three items through a two-item ring, so the producer finds it full and the consumer empty,
/// and the third push reuses the first slot.
#[test]
fn fifo_through_wraparound() {
    model(|| {
        let (mut tx, mut rx) = channel::<Box<u32>>(2);
        let producer = thread::spawn(move || {
            for i in 0..3 {
                let mut v = Box::new(i);
                while let Err(back) = tx.push(v) {
                    v = back;
                    thread::yield_now();
                }
            }
        });
        for i in 0..3 {
            loop {
                if let Some(v) = rx.pop() {
                    assert_eq!(*v, i);
                    break;
                }
                thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.pop(), None);
    });
}

struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Each end drops on its own thread while the other may still be working: every item is dropped
/// once, by the consumer or by whichever end goes last.
#[test]
fn items_left_inside_are_dropped_once() {
    model(|| {
        let drops = Arc::new(AtomicUsize::new(0));
        let (mut tx, mut rx) = channel::<Counted>(2);
        let d = Arc::clone(&drops);
        let producer = thread::spawn(move || {
            for _ in 0..2 {
                // Two items fit: no push fails.
                assert!(tx.push(Counted(Arc::clone(&d))).is_ok());
            }
        });
        let consumer = thread::spawn(move || {
            drop(rx.pop());
        });
        producer.join().unwrap();
        consumer.join().unwrap();
        assert_eq!(drops.load(Ordering::Relaxed), 2);
    });
}
