//! Cross-core rings: bounded queues between the workers, one per ordered pair of cores, so each
//! has a single producer and a single consumer. A push that finds the ring full fails and the
//! caller keeps the message (back-pressure); a push wakes the consumer's poll loop.
//!
//! Today the queue is `crossbeam_queue::ArrayQueue` (lock-free, bounded); a purpose-built SPSC
//! ring can replace it behind this type.

use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

/// One direction between two cores.
pub struct Ring<T> {
    q: ArrayQueue<T>,
    waker: Arc<mio::Waker>,
}

impl<T> Ring<T> {
    /// A ring of `capacity` slots whose pushes wake `waker` (the consumer's poll).
    pub fn new(capacity: usize, waker: Arc<mio::Waker>) -> Ring<T> {
        Ring {
            q: ArrayQueue::new(capacity),
            waker,
        }
    }

    /// Sends `msg`; gives it back when the ring is full.
    ///
    /// # Errors
    /// The ring is full: try again after a later poll turn.
    pub fn push(&self, msg: T) -> Result<(), T> {
        self.q.push(msg)?;
        // A failed wake only delays the consumer to its next timeout.
        let _ = self.waker.wake();
        Ok(())
    }

    pub fn pop(&self) -> Option<T> {
        self.q.pop()
    }
}

/// Every ring of a node: `rings[from][to]`.
pub struct Rings<T> {
    rings: Vec<Vec<Ring<T>>>,
}

impl<T> Rings<T> {
    /// Rings between `wakers.len()` workers, each of `capacity` slots.
    pub fn new(wakers: &[Arc<mio::Waker>], capacity: usize) -> Rings<T> {
        let n = wakers.len();
        Rings {
            rings: (0..n)
                .map(|_| (0..n).map(|to| Ring::new(capacity, Arc::clone(&wakers[to]))).collect())
                .collect(),
        }
    }

    pub fn get(&self, from: usize, to: usize) -> &Ring<T> {
        &self.rings[from][to]
    }

    pub fn workers(&self) -> usize {
        self.rings.len()
    }
}
