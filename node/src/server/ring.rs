//! Cross-core rings: one bounded single-producer single-consumer ring ([`bolide_ring`]) per
//! ordered pair of workers, so every ring has exactly one writer and one reader and no lock is
//! taken on the data path (DESIGN.md, "Thread per core"). Each worker owns the producer ends
//! of its rings to the others and the consumer ends of theirs to it. A push that finds the ring
//! full fails and the caller keeps the message (back-pressure).
//!
//! **Waking.** A push rings the consumer's [`Doorbell`] (an eventfd write: a system call) only
//! when the consumer said it is parked ([`Parking`]). The consumer announces `parked` with a
//! sequentially consistent store, then looks at its rings once more before it sleeps; the
//! producer pushes, then loads `parked` with a sequentially consistent load. One of the two
//! always sees the other (the store-load pattern of Dekker's algorithm), so no message waits
//! for a wake-up that never comes, and a busy core is never rung at all.

use bolide_drivers::net::Doorbell;
use bolide_ring::{Consumer, Producer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A core's parked flag and doorbell, shared with every core that sends to it.
pub struct Parking<B: Doorbell> {
    parked: AtomicBool,
    /// Doorbell rings sent to this core (each one a wake-up system call).
    rung: AtomicU64,
    /// `rung` as of the owner's last drain (written by the owner only): an unpark with no new
    /// ring skips the drain's system call.
    drained: AtomicU64,
    pub bell: B,
}

impl<B: Doorbell> Parking<B> {
    pub fn new(bell: B) -> Parking<B> {
        Parking {
            parked: AtomicBool::new(false),
            rung: AtomicU64::new(0),
            drained: AtomicU64::new(0),
            bell,
        }
    }

    /// Called by the owning core before it sleeps; it must check its rings after this.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Called by the owning core when it wakes (or decides not to sleep).
    ///
    /// Drains the doorbell only if it was rung since the last drain. A ring that lands after
    /// the check stays pending: the next park then wakes at once and drains it.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::Relaxed);
        let rung = self.rung.load(Ordering::Acquire);
        if rung != self.drained.load(Ordering::Relaxed) {
            self.drained.store(rung, Ordering::Relaxed);
            self.bell.drain();
        }
    }

    /// Wakes the core if it is parked (after a push).
    pub fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) {
            // Ring first, count after: an owner that sees the count drains a doorbell that is
            // already rung (see `unpark`).
            self.bell.ring();
            self.rung.fetch_add(1, Ordering::Release);
        }
    }

    /// Doorbell rings sent to this core so far.
    pub fn rings(&self) -> u64 {
        self.rung.load(Ordering::Relaxed)
    }
}

/// The sending end of a ring and the receiver's parking.
type Outbound<T, B> = (Producer<T>, Arc<Parking<B>>);

/// One worker's ends of the mesh of rings.
pub struct WorkerRings<T, B: Doorbell> {
    /// `to[w]`: the ring to worker `w` and its parking (`None` for this worker itself).
    to: Vec<Option<Outbound<T, B>>>,
    /// `from[w]`: the ring from worker `w` (`None` for this worker itself).
    from: Vec<Option<Consumer<T>>>,
    /// Messages pushed (cross-core messages sent).
    pub sent: u64,
}

impl<T: Send, B: Doorbell> WorkerRings<T, B> {
    /// Sends `msg` to worker `to`, waking it if it is parked.
    ///
    /// # Errors
    /// The ring is full: the message comes back; try again after a later turn.
    ///
    /// # Panics
    /// If `to` is this worker or out of range (a caller bug).
    pub fn push(&mut self, to: usize, msg: T) -> Result<(), T> {
        let (p, parking) = self.to[to].as_mut().expect("no ring from a worker to itself");
        p.push(msg)?;
        self.sent += 1;
        parking.wake();
        Ok(())
    }

    /// The next message from worker `from`, if any.
    pub fn pop(&mut self, from: usize) -> Option<T> {
        self.from[from].as_mut()?.pop()
    }

    /// Whether any inbound ring holds a message.
    pub fn any_inbound(&self) -> bool {
        self.from.iter().flatten().any(|c| !c.is_empty())
    }

    /// Workers in the mesh.
    pub fn workers(&self) -> usize {
        self.to.len()
    }
}

/// The rings between `parkings.len()` workers, each of `capacity` slots: element `w` holds
/// worker `w`'s ends.
///
/// # Panics
/// If `capacity` is 0.
pub fn mesh<T: Send, B: Doorbell>(parkings: &[Arc<Parking<B>>], capacity: usize) -> Vec<WorkerRings<T, B>> {
    let n = parkings.len();
    let mut rings: Vec<WorkerRings<T, B>> = (0..n)
        .map(|_| WorkerRings {
            to: (0..n).map(|_| None).collect(),
            from: (0..n).map(|_| None).collect(),
            sent: 0,
        })
        .collect();
    for a in 0..n {
        for b in 0..n {
            if a != b {
                let (p, c) = bolide_ring::channel(capacity);
                rings[a].to[b] = Some((p, Arc::clone(&parkings[b])));
                rings[b].from[a] = Some(c);
            }
        }
    }
    rings
}

#[cfg(test)]
mod tests {
    use super::*;
    use bolide_drivers::net::SimDoorbell;

    fn parkings(n: usize) -> Vec<Arc<Parking<SimDoorbell>>> {
        (0..n).map(|_| Arc::new(Parking::new(SimDoorbell::new()))).collect()
    }

    #[test]
    fn every_pair_has_its_own_bounded_ring() {
        let p = parkings(3);
        let mut rings = mesh::<u32, _>(&p, 2);
        rings[0].push(1, 10).unwrap();
        rings[0].push(1, 11).unwrap();
        assert_eq!(rings[0].push(1, 12), Err(12), "full ring refuses");
        rings[2].push(1, 20).unwrap();
        assert!(rings[1].any_inbound());
        assert_eq!(rings[1].pop(0), Some(10));
        assert_eq!(rings[1].pop(2), Some(20));
        assert_eq!(rings[1].pop(0), Some(11));
        assert_eq!(rings[1].pop(0), None);
        assert!(!rings[1].any_inbound());
        assert!(rings[2].pop(0).is_none(), "0 sent nothing to 2");
    }

    #[test]
    fn a_push_rings_only_a_parked_core() {
        let p = parkings(2);
        let mut rings = mesh::<u32, _>(&p, 8);
        rings[0].push(1, 1).unwrap();
        assert!(!p[1].bell.is_rung(), "a busy core is not rung");
        p[1].park();
        rings[0].push(1, 2).unwrap();
        assert!(p[1].bell.is_rung(), "a parked core is rung");
        assert_eq!(p[1].rings(), 1);
        p[1].unpark();
        assert!(!p[1].bell.is_rung(), "unpark drains the doorbell");
        rings[0].push(1, 3).unwrap();
        assert_eq!(p[1].rings(), 1);
    }

    #[test]
    fn unpark_drains_only_after_a_ring() {
        let p = parkings(2);
        let mut rings = mesh::<u32, _>(&p, 8);
        // A doorbell rung behind the counter's back (as by a ring whose count is not yet
        // visible) is left for the next unpark that sees a new count.
        p[1].bell.ring();
        p[1].park();
        p[1].unpark();
        assert!(p[1].bell.is_rung(), "no new ring counted: no drain (no system call)");
        p[1].park();
        rings[0].push(1, 1).unwrap();
        p[1].unpark();
        assert!(!p[1].bell.is_rung(), "a counted ring is drained");
    }
}
