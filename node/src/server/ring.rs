//! Cross-core rings: one bounded single-producer single-consumer ring ([`bolide_ring`]) per
//! ordered pair of workers, so every ring has exactly one writer and one reader and no lock is
//! taken on the data path (DESIGN.md, "Thread per core"). Each worker owns the producer ends
//! of its rings to the others and the consumer ends of theirs to it. A push that finds the ring
//! full fails and the caller keeps the message (back-pressure); a push wakes the consumer's
//! poll loop.

use bolide_ring::{Consumer, Producer};
use std::sync::Arc;

/// One worker's ends of the mesh of rings.
pub struct WorkerRings<T> {
    /// `to[w]`: the ring to worker `w` and its poll waker (`None` for this worker itself).
    to: Vec<Option<(Producer<T>, Arc<mio::Waker>)>>,
    /// `from[w]`: the ring from worker `w` (`None` for this worker itself).
    from: Vec<Option<Consumer<T>>>,
}

impl<T: Send> WorkerRings<T> {
    /// Sends `msg` to worker `to` and wakes it.
    ///
    /// # Errors
    /// The ring is full: the message comes back; try again after a later poll turn.
    ///
    /// # Panics
    /// If `to` is this worker or out of range (a caller bug).
    pub fn push(&mut self, to: usize, msg: T) -> Result<(), T> {
        let (p, waker) = self.to[to].as_mut().expect("no ring from a worker to itself");
        p.push(msg)?;
        // A failed wake only delays the consumer to its next poll timeout.
        let _ = waker.wake();
        Ok(())
    }

    /// The next message from worker `from`, if any.
    pub fn pop(&mut self, from: usize) -> Option<T> {
        self.from[from].as_mut()?.pop()
    }

    /// Workers in the mesh.
    pub fn workers(&self) -> usize {
        self.to.len()
    }
}

/// The rings between `wakers.len()` workers, each of `capacity` slots: element `w` holds
/// worker `w`'s ends.
///
/// # Panics
/// If `capacity` is 0.
pub fn mesh<T: Send>(wakers: &[Arc<mio::Waker>], capacity: usize) -> Vec<WorkerRings<T>> {
    let n = wakers.len();
    let mut rings: Vec<WorkerRings<T>> = (0..n)
        .map(|_| WorkerRings {
            to: (0..n).map(|_| None).collect(),
            from: (0..n).map(|_| None).collect(),
        })
        .collect();
    for a in 0..n {
        for b in 0..n {
            if a != b {
                let (p, c) = bolide_ring::channel(capacity);
                rings[a].to[b] = Some((p, Arc::clone(&wakers[b])));
                rings[b].from[a] = Some(c);
            }
        }
    }
    rings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_has_its_own_bounded_ring() {
        let polls: Vec<mio::Poll> = (0..3).map(|_| mio::Poll::new().unwrap()).collect();
        let wakers: Vec<_> = polls
            .iter()
            .map(|p| Arc::new(mio::Waker::new(p.registry(), mio::Token(1)).unwrap()))
            .collect();
        let mut m = mesh::<(usize, u32)>(&wakers, 2);
        assert_eq!(m[0].workers(), 3);
        m[0].push(2, (0, 1)).unwrap();
        m[1].push(2, (1, 1)).unwrap();
        m[0].push(2, (0, 2)).unwrap();
        assert_eq!(m[0].push(2, (0, 3)), Err((0, 3)), "full: the message comes back");
        assert_eq!(m[2].pop(1), Some((1, 1)));
        assert_eq!(m[2].pop(1), None);
        assert_eq!(m[2].pop(0), Some((0, 1)));
        assert_eq!(m[2].pop(0), Some((0, 2)));
        assert_eq!(m[2].pop(2), None, "no ring to itself");
        assert_eq!(m[1].pop(0), None);
    }
}
