//! A bounded, lock-free, single-producer single-consumer (SPSC) ring: the queue Bolide's
//! cores use to pass messages to one another (one ring per ordered pair of cores).
//!
//! ```
//! let (mut tx, mut rx) = bolide_ring::channel::<u64>(2);
//! assert_eq!(tx.push(1), Ok(()));
//! assert_eq!(tx.push(2), Ok(()));
//! assert_eq!(tx.push(3), Err(3)); // full: the caller keeps the value (back-pressure)
//! assert_eq!(rx.pop(), Some(1));
//! assert_eq!(tx.push(3), Ok(()));
//! assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Some(2), Some(3), None));
//! ```
//!
//! # Guarantees
//!
//! - **Bounded, exact capacity.** [`channel`]`(n)` holds at most `n` items, exactly the `n` asked
//!   for. The slot array is rounded up to the next power of two so that an index maps to its slot
//!   with a mask, but only `n` slots are ever in use. `n == 0` panics.
//! - **FIFO**: items come out in the order they went in, each exactly once.
//! - **Wait-free** [`Producer::push`] and [`Consumer::pop`]: each is a bounded number of steps
//!   (no loop, no CAS, no lock); a full ring fails the push and gives the value back, an empty
//!   ring fails the pop. Neither end ever waits for the other.
//! - **One producer, one consumer**, enforced by the types: neither end is `Clone`, `push` and
//!   `pop` take `&mut self`. Both ends are `Send` (when `T: Send`), so each can move to its own
//!   thread. They are deliberately not `Sync`: an `&Producer` shared between threads would be
//!   sound today (only `&mut` touches the slots), but nothing needs it, and not promising it keeps
//!   `&self` methods free to use unsynchronised state later.
//!
//!   ```compile_fail,E0599
//!   let (tx, _rx) = bolide_ring::channel::<u8>(1);
//!   let _second_producer = tx.clone(); // neither end is Clone
//!   ```
//!   ```compile_fail,E0277
//!   fn shared_between_threads<S: Sync>(_: &S) {}
//!   let (tx, _rx) = bolide_ring::channel::<u8>(1);
//!   shared_between_threads(&tx); // not Sync
//!   ```
//!   ```compile_fail,E0277
//!   let _ = bolide_ring::channel::<std::rc::Rc<u8>>(1); // items must be Send
//!   ```
//! - **No leak, no double drop.** Items still in the ring when both ends have been dropped are
//!   dropped then, once each. (If one of those drops panics, the items after it are leaked, never
//!   dropped twice.)
//! - **No allocation after [`channel`].**
//!
//! # Layout and the cached-index optimisation
//!
//! The ring is Lamport's: two free-running counters, `head` (the next item to pop; written only
//! by the consumer) and `tail` (the next slot to push; written only by the producer). The ring
//! holds `tail - head` items (wrapping arithmetic; the slot count is a power of two, so it divides
//! 2^64 and a wrapped counter still masks to the right slot). Each counter sits alone on a
//! 128-byte-aligned block, so the two ends never false-share, even under the adjacent-line
//! prefetcher that pulls 64-byte lines in pairs on x86.
//!
//! Each end keeps its own counter in a plain field and a *cached copy* of the other end's counter
//! (Rigtorp's `SPSCQueue`; the "cached index" of the Lamport-ring literature, cf. FastForward and
//! MCRingBuffer). The producer only reloads `head` when its cached copy says the ring is full, the
//! consumer only reloads `tail` when its copy says it is empty. Under a steady stream the common
//! case touches no line the other core writes except the slot itself.
//!
//! # Memory ordering
//!
//! Two happens-before edges make the slot accesses data-race free:
//!
//! 1. **Publish** (producer → consumer). The producer writes slot `t`, then stores `tail = t + 1`
//!    with `Release`. The consumer reads slot `t` only after it has loaded a `tail > t` with
//!    `Acquire`. Release/Acquire on the same atomic makes the slot write happen-before the read.
//! 2. **Recycle** (consumer → producer). The consumer moves the item out of slot `h`, then stores
//!    `head = h + 1` with `Release`. The producer overwrites that slot (as index `h + capacity`)
//!    only after it has loaded a `head > h` with `Acquire`, so the move-out happens-before the
//!    overwrite.
//!
//! A cached index is a value the same thread loaded earlier with `Acquire`, and the counters only
//! grow, so acting on a stale cached value is conservative (the ring looks fuller, or emptier,
//! than it is) and the edge it relies on was established by that earlier load. The final drop of
//! the shared state runs after both ends are gone; `Arc`'s last decrement (Release, then an
//! Acquire fence) orders both ends' last stores before it.
//!
//! `len`, `is_empty` and `is_full` load the other end's counter `Relaxed`: they access no slot,
//! and read-read coherence keeps the count within `0..=capacity` (see [`Producer::len`]).
//!
//! Under `--cfg loom` the atomics, the `Arc` and the slot cells come from
//! [loom](https://docs.rs/loom), which model-checks the edges above (`tests/loom.rs`).
//!
//! # References
//!
//! - L. Lamport, "Specifying Concurrent Program Modules", ACM TOPLAS 5(2), 1983: the
//!   single-producer single-consumer circular buffer without locks.
//! - E. Rigtorp, `SPSCQueue` (C++): cache-line-padded indices and the cached-index optimisation.
//! - J. Giacomoni, T. Moseley, M. Vachharajani, "FastForward for Efficient Pipeline Parallelism",
//!   PPoPP 2008; P. P. C. Lee, T. Bu, G. Chandranmenon, "A Lock-Free, Cache-Efficient Multi-Core
//!   Synchronization Mechanism for Line-Rate Network Traffic Monitoring" (MCRingBuffer),
//!   IPDPS 2010: why the two indices must not share a cache line, and batching their updates.
//! - `crossbeam_utils::CachePadded`: 128-byte alignment on x86-64 for the spatial prefetcher.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![warn(missing_docs)]

use std::fmt;
use std::mem::MaybeUninit;

use sync::atomic::{AtomicUsize, Ordering};
use sync::{Arc, UnsafeCell};

/// The primitives, from std or (under `--cfg loom`) from loom's model checker.
mod sync {
    #[cfg(loom)]
    pub(crate) use loom::{
        cell::UnsafeCell,
        sync::{atomic, Arc},
    };

    #[cfg(not(loom))]
    pub(crate) use std::sync::{atomic, Arc};

    /// `std::cell::UnsafeCell` with loom's closure-based access API, so the ring's code is the
    /// same under loom (which checks each access for races) and in a normal build.
    #[cfg(not(loom))]
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

    #[cfg(not(loom))]
    impl<T> UnsafeCell<T> {
        pub(crate) fn new(v: T) -> UnsafeCell<T> {
            UnsafeCell(std::cell::UnsafeCell::new(v))
        }

        /// Calls `f` with a raw pointer to the contents; the caller upholds aliasing.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

/// Aligns (and so pads) a value to 128 bytes: two 64-byte lines, because x86's adjacent-line
/// prefetcher fetches lines in pairs and would otherwise couple neighbouring counters.
#[repr(align(128))]
struct CachePadded<T>(T);

const _: () = assert!(std::mem::align_of::<CachePadded<AtomicUsize>>() == 128);
const _: () = assert!(std::mem::size_of::<CachePadded<AtomicUsize>>() == 128);

/// The state both ends share.
struct Shared<T> {
    /// Next item to pop. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next slot to push. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Items the ring holds at most, as asked for; `1 ..= slots.len()`.
    capacity: usize,
    /// `slots.len() - 1`; `slots.len()` is a power of two.
    mask: usize,
    /// Slot `i & mask` holds an initialised item exactly when `head <= i < tail` (wrapping).
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        &self.slots[index & self.mask]
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        if !std::mem::needs_drop::<T>() {
            return;
        }
        // Relaxed (both): `&mut self` means both ends are gone, and the `Arc`'s last decrement
        // already ordered their final stores (and slot writes) before this drop.
        let head = self.head.0.load(Ordering::Relaxed);
        let tail = self.tail.0.load(Ordering::Relaxed);
        let mut i = head;
        while i != tail {
            self.slot(i).with_mut(|p| {
                // SAFETY: `head <= i < tail`, so the slot holds an initialised item (the
                // `Shared::slots` invariant), and it is dropped once: `i` moves past it and no end
                // is left to read it. `&mut self` excludes any other access.
                unsafe { p.cast::<T>().drop_in_place() }
            });
            i = i.wrapping_add(1);
        }
    }
}

/// Creates a ring holding at most `capacity` items and returns its two ends.
///
/// The capacity is exact; the slot array behind it is rounded up to the next power of two (so a
/// capacity of 1000 allocates 1024 slots). Allocates once, here.
///
/// # Panics
/// If `capacity` is 0, or its next power of two overflows `usize`.
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "bolide_ring::channel: capacity must be at least 1, got 0");
    let slot_count = capacity
        .checked_next_power_of_two()
        .unwrap_or_else(|| panic!("bolide_ring::channel: capacity {capacity} is too large"));
    let slots = (0..slot_count)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        capacity,
        mask: slot_count - 1,
        slots,
    });
    let producer = Producer {
        shared: Arc::clone(&shared),
        tail: 0,
        cached_head: 0,
    };
    let consumer = Consumer {
        shared,
        head: 0,
        cached_tail: 0,
    };
    (producer, consumer)
}

/// The sending end of a ring made by [`channel`].
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Our copy of `shared.tail`: we are its only writer, so it is always current.
    tail: usize,
    /// A `head` loaded earlier with Acquire; `<=` the current `head`.
    cached_head: usize,
}

// SAFETY: the producer moves `T`s into the ring for the consumer's thread to take out, which needs
// `T: Send`. The slots it touches are free (`tail - head < capacity`, with the Acquire/Release
// edges in the crate docs), so it never races the consumer; the `Arc` is shared by exactly these
// two ends.
unsafe impl<T: Send> Send for Producer<T> {}

impl<T> Producer<T> {
    /// Appends `value`, or gives it back if the ring is full. Wait-free.
    ///
    /// # Errors
    /// The ring holds `capacity()` items: `Err(value)`; try again after the consumer has popped.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let shared = &*self.shared;
        let tail = self.tail;
        if tail.wrapping_sub(self.cached_head) == shared.capacity {
            // Acquire: pairs with the consumer's Release store of `head` in `pop`, so its
            // move-out of every slot below the loaded `head` happens-before our overwrite of it.
            let head = shared.head.0.load(Ordering::Acquire);
            assert!(
                tail.wrapping_sub(head) <= shared.capacity,
                "bolide_ring: consumer's head {head} is past the producer's tail {tail}",
            );
            self.cached_head = head;
            if tail.wrapping_sub(head) == shared.capacity {
                return Err(value);
            }
        }
        shared.slot(tail).with_mut(|p| {
            // SAFETY: `tail - cached_head < capacity <= slots.len()`, and `cached_head <= head`,
            // so slot `tail & mask` is outside `head..tail`: it holds no item, and the consumer
            // will not read it until we publish `tail + 1` below. The consumer's last read of it
            // (as index `tail - slots.len()`) happens-before this write by the Acquire above or an
            // earlier one. Only this thread writes the slots (`&mut self`; `Producer` is not Clone).
            unsafe { p.cast::<T>().write(value) };
        });
        self.tail = tail.wrapping_add(1);
        // Release: pairs with the consumer's Acquire load of `tail` in `pop`, so the slot write
        // above happens-before the consumer's read of it.
        shared.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Items in the ring now. The consumer may pop concurrently, so this is an upper bound by
    /// the time it returns; always `<= capacity()`.
    pub fn len(&self) -> usize {
        // Relaxed: only a count, no slot access follows. By read-read coherence the value is no
        // older than the `cached_head` that let our last push through, so `tail - head <=
        // capacity`; and `head <= tail` since the consumer never passes a `tail` we published.
        let head = self.shared.head.0.load(Ordering::Relaxed);
        self.tail.wrapping_sub(head)
    }

    /// Whether the ring holds no item (it may gain none until this end pushes).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a push now would fail (the consumer may pop concurrently, freeing a slot).
    pub fn is_full(&self) -> bool {
        self.len() == self.shared.capacity
    }

    /// The most items the ring holds: the capacity given to [`channel`].
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// The receiving end of a ring made by [`channel`].
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Our copy of `shared.head`: we are its only writer, so it is always current.
    head: usize,
    /// A `tail` loaded earlier with Acquire; `<=` the current `tail`.
    cached_tail: usize,
}

// SAFETY: the consumer takes out `T`s the producer's thread put in, which needs `T: Send`. The
// slots it reads are published (`head < tail`, with the Acquire/Release edges in the crate docs),
// so it never races the producer; the `Arc` is shared by exactly these two ends.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Consumer<T> {
    /// Takes the oldest item, or `None` if the ring is empty. Wait-free.
    pub fn pop(&mut self) -> Option<T> {
        let shared = &*self.shared;
        let head = self.head;
        if head == self.cached_tail {
            // Acquire: pairs with the producer's Release store of `tail` in `push`, so its write
            // of every slot below the loaded `tail` happens-before our read of it.
            let tail = shared.tail.0.load(Ordering::Acquire);
            assert!(
                tail.wrapping_sub(head) <= shared.capacity,
                "bolide_ring: producer's tail {tail} is out of range of the consumer's head {head}",
            );
            self.cached_tail = tail;
            if head == tail {
                return None;
            }
        }
        let value = shared.slot(head).with_mut(|p| {
            // SAFETY: `head < cached_tail <= tail`, so the slot holds an initialised item, whose
            // write happens-before this read by the Acquire above or an earlier one. The producer
            // will not touch the slot again until it sees the `head + 1` we publish below, and only
            // this thread reads slots (`&mut self`; `Consumer` is not Clone), so the item is moved
            // out exactly once.
            unsafe { p.cast::<T>().read() }
        });
        self.head = head.wrapping_add(1);
        // Release: pairs with the producer's Acquire load of `head` in `push`, so the read above
        // happens-before the producer's next write to this slot.
        shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Items in the ring now. The producer may push concurrently, so this is a lower bound by
    /// the time it returns; always `<= capacity()`.
    pub fn len(&self) -> usize {
        // Relaxed: only a count, no slot access follows. `tail >= head` since we never pass a
        // `tail` the producer published, and `tail - head <= capacity` as the producer never
        // publishes a `tail` more than `capacity` past a `head` we published.
        let tail = self.shared.tail.0.load(Ordering::Relaxed);
        tail.wrapping_sub(self.head)
    }

    /// Whether a pop now would return `None` (the producer may push concurrently).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the ring holds: the capacity given to [`channel`].
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_live_on_their_own_lines() {
        let (tx, _rx) = channel::<u8>(1);
        let s = &*tx.shared;
        let head = std::ptr::from_ref(&s.head) as usize;
        let tail = std::ptr::from_ref(&s.tail) as usize;
        assert_eq!(head % 128, 0);
        assert_eq!(tail % 128, 0);
        assert!(head.abs_diff(tail) >= 128);
        // The read-mostly fields are on neither counter's block.
        for f in [
            std::ptr::from_ref(&s.capacity) as usize,
            std::ptr::from_ref(&s.mask) as usize,
            std::ptr::from_ref(&s.slots) as usize,
        ] {
            assert!(f / 128 != head / 128 && f / 128 != tail / 128);
        }
    }

    #[test]
    fn slot_array_is_the_next_power_of_two() {
        for (cap, slots) in [(1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024)] {
            let (tx, _rx) = channel::<u8>(cap);
            assert_eq!(tx.shared.slots.len(), slots);
            assert_eq!(tx.capacity(), cap);
        }
    }

    #[test]
    fn counters_wrap_around_usize() {
        // Start both counters just below usize::MAX and push/pop across the wrap.
        let (mut tx, mut rx) = channel::<u32>(3);
        let start = usize::MAX - 5;
        tx.shared.head.0.store(start, Ordering::Relaxed);
        tx.shared.tail.0.store(start, Ordering::Relaxed);
        (tx.tail, tx.cached_head) = (start, start);
        (rx.head, rx.cached_tail) = (start, start);
        let mut next_out = 0;
        for i in 0..20 {
            assert_eq!(tx.push(i), Ok(()));
            if i % 2 == 1 {
                assert_eq!(rx.pop(), Some(next_out));
                next_out += 1;
            }
            if tx.is_full() {
                assert_eq!(tx.push(99), Err(99));
                assert_eq!(rx.pop(), Some(next_out));
                next_out += 1;
            }
            assert!(tx.len() <= 3 && tx.len() == rx.len());
        }
        while let Some(v) = rx.pop() {
            assert_eq!(v, next_out);
            next_out += 1;
        }
        assert_eq!(next_out, 20);
    }
}
