//! The conformance suite every [`BlockDevice`] backend must pass.
//!
//! Each `check_*` function exercises one behaviour of the trait on a **fresh** device (nothing
//! in flight, nothing ever written, so unwritten sectors read as zeros) of at least
//! [`MIN_CAPACITY_BYTES`] with `max_in_flight` of at least [`MIN_IN_FLIGHT`], and panics with a
//! message naming the check, the device and what went wrong. Every check is bounded (at most
//! [`MAX_REAP_CALLS`] `reap` calls per wait) and takes well under a second on a fault-free
//! backend.
//!
//! Run them all for a backend with [`conformance_suite!`](crate::conformance_suite), which
//! expands into one `#[test]` per check:
//!
//! ```
//! use bolide_drivers::sim::{SimConfig, SimDevice};
//! bolide_drivers::conformance_suite!(sim, SimDevice::new(SimConfig::new("sim", 16 << 20, 1)));
//! # fn main() {}
//! ```
//!
//! or call [`check_all`] with a factory.

use crate::buf::{BufPool, IoBuf, SECTOR_SIZE};
use crate::device::{check_io, BlockDevice, Completion, IoKind, SubmitError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Smallest device the checks run on, bytes.
pub const MIN_CAPACITY_BYTES: u64 = 8 << 20;

/// Smallest `max_in_flight` the checks run on.
pub const MIN_IN_FLIGHT: usize = 8;

/// Most `max_in_flight` the queue-full check fills (it queues that many 4 KiB reads).
pub const MAX_CHECKED_IN_FLIGHT: usize = 1 << 16;

/// Most `reap` calls any one wait makes before the check fails for lack of progress.
pub const MAX_REAP_CALLS: usize = 10_000;

const SS: u64 = SECTOR_SIZE as u64;
const MIB: usize = 1 << 20;

/// Panics unless `dev` is fresh-looking and big enough for the checks.
fn preconditions<D: BlockDevice + ?Sized>(check: &str, dev: &D) {
    let info = dev.info();
    assert!(
        info.capacity_bytes >= MIN_CAPACITY_BYTES,
        "{check}: {} has {} bytes; the checks need at least {MIN_CAPACITY_BYTES}",
        info.name,
        info.capacity_bytes
    );
    assert!(
        info.max_in_flight >= MIN_IN_FLIGHT,
        "{check}: {} has max_in_flight {}; the checks need at least {MIN_IN_FLIGHT}",
        info.name,
        info.max_in_flight
    );
    assert_eq!(dev.in_flight(), 0, "{check}: {} is not idle at the start", info.name);
}

/// Fills `buf` with bytes that depend on `seed` and the device byte offset of each 8-byte word,
/// so a sector in the wrong place or from the wrong I/O is caught. Never all zeros.
pub fn fill_pattern(buf: &mut [u8], seed: u64, offset: u64) {
    for (i, word) in buf.chunks_mut(8).enumerate() {
        let pos = offset + 8 * i as u64;
        let v =
            (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).rotate_left(17) | 1;
        word.copy_from_slice(&v.to_le_bytes()[..word.len()]);
    }
}

/// A buffer of `len` bytes holding [`fill_pattern`]`(seed, offset)`.
pub fn pattern_buf(len: usize, seed: u64, offset: u64) -> IoBuf {
    let mut buf = IoBuf::new(len);
    fill_pattern(buf.as_mut_slice(), seed, offset);
    buf
}

/// Panics unless `data` is [`fill_pattern`]`(seed, offset)`, naming the first bad byte.
fn assert_pattern(check: &str, data: &[u8], seed: u64, offset: u64) {
    let mut want = vec![0u8; data.len()];
    fill_pattern(&mut want, seed, offset);
    if let Some(i) = data.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{check}: data read at offset {offset} differs from what was written (seed {seed}) \
             at byte {i} (device offset {}): got {:#04x}, want {:#04x}",
            offset + i as u64,
            data[i],
            want[i]
        );
    }
}

fn assert_zeros(check: &str, data: &[u8], offset: u64) {
    if let Some(i) = data.iter().position(|&b| b != 0) {
        panic!(
            "{check}: unwritten byte at device offset {} reads {:#04x}, not zero",
            offset + i as u64,
            data[i]
        );
    }
}

/// Hands over every queued I/O, calling `submit` until it has handed over `n` in all.
///
/// # Panics
/// If `submit` fails or makes no progress.
pub fn submit_all<D: BlockDevice + ?Sized>(dev: &mut D, n: usize) {
    let mut done = 0;
    for _ in 0..MAX_REAP_CALLS {
        if done >= n {
            return;
        }
        done += dev.submit().unwrap_or_else(|e| panic!("submit failed: {e}"));
    }
    panic!("{}: only {done} of {n} I/Os handed over", dev.info().name);
}

/// Reaps at least `n` completions (calling `reap(out, remaining)` repeatedly); a backend may
/// return more than asked in its last call.
///
/// # Panics
/// If `reap` fails or misreports its count, or `n` have not arrived after [`MAX_REAP_CALLS`]
/// calls.
pub fn reap_at_least<D: BlockDevice + ?Sized>(dev: &mut D, n: usize) -> Vec<Completion> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..MAX_REAP_CALLS {
        if out.len() >= n {
            return out;
        }
        let before = out.len();
        let got = dev
            .reap(&mut out, n - before)
            .unwrap_or_else(|e| panic!("reap failed: {e}"));
        assert_eq!(
            got,
            out.len() - before,
            "{}: reap's count differs from what it added",
            dev.info().name
        );
    }
    panic!(
        "{}: {} of {n} completions after {MAX_REAP_CALLS} reap calls",
        dev.info().name,
        out.len()
    );
}

/// Reaps exactly `n` completions: use it when `n` is everything in flight.
///
/// # Panics
/// As [`reap_at_least`], and if more than `n` arrive.
pub fn reap_n<D: BlockDevice + ?Sized>(dev: &mut D, n: usize) -> Vec<Completion> {
    let out = reap_at_least(dev, n);
    assert_eq!(out.len(), n, "{}: expected {n} completions", dev.info().name);
    out
}

/// Writes `buf` at `offset` on an otherwise idle device, waits for it and returns the buffer.
///
/// # Panics
/// If the submit is refused or the write fails.
pub fn write_sync<D: BlockDevice + ?Sized>(dev: &mut D, offset: u64, buf: IoBuf) -> IoBuf {
    dev.submit_write(offset, buf, u64::MAX)
        .unwrap_or_else(|e| panic!("submit_write at {offset}: {e}"));
    submit_all(dev, 1);
    let mut c = reap_n(dev, 1);
    let c = c.pop().expect("one completion");
    if let Err(e) = &c.result {
        panic!("write failed: {e}");
    }
    c.buf.expect("a write completion carries its buffer")
}

/// Reads `len` bytes at `offset` on an otherwise idle device into a new buffer (pre-filled with `0xA5` so an untouched buffer
/// is noticed) and returns it.
///
/// # Panics
/// If the submit is refused or the read fails.
pub fn read_sync<D: BlockDevice + ?Sized>(dev: &mut D, offset: u64, len: usize) -> IoBuf {
    let mut buf = IoBuf::new(len);
    buf.as_mut_slice().fill(0xA5);
    dev.submit_read(offset, buf, u64::MAX - 1)
        .unwrap_or_else(|e| panic!("submit_read at {offset}: {e}"));
    submit_all(dev, 1);
    let mut c = reap_n(dev, 1);
    let c = c.pop().expect("one completion");
    if let Err(e) = &c.result {
        panic!("read failed: {e}");
    }
    c.buf.expect("a read completion carries its buffer")
}

/// `info()` is sane: a name, 4 KiB sectors, capacity a positive multiple of the sector size,
/// `max_in_flight` ≥ 1, nothing in flight on a fresh device.
pub fn check_info<D: BlockDevice + ?Sized>(dev: &mut D) {
    let info = dev.info().clone();
    assert!(!info.name.is_empty(), "check_info: empty device name");
    assert_eq!(
        info.sector_size_bytes, SECTOR_SIZE,
        "check_info: {}: sector size",
        info.name
    );
    assert!(
        info.capacity_bytes > 0 && info.capacity_bytes.is_multiple_of(SS),
        "check_info: {}: capacity {} is not a positive multiple of {SS}",
        info.name,
        info.capacity_bytes
    );
    assert!(info.max_in_flight >= 1, "check_info: {}: max_in_flight is 0", info.name);
    assert_eq!(
        dev.in_flight(),
        0,
        "check_info: {}: fresh device has I/O in flight",
        info.name
    );
}

/// Data written reads back: 1 sector at 0, 1 MiB at 1 MiB, 3 sectors at an odd sector, the last
/// sector, a buffer whose `len()` is less than its capacity (only `len()` bytes move), and an
/// overwrite. Neighbouring sectors stay zero.
pub fn check_write_read_roundtrip<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_write_read_roundtrip";
    preconditions(CHECK, dev);
    let cap = dev.info().capacity_bytes;
    let cases: [(u64, usize); 4] = [
        (0, SECTOR_SIZE),
        (MIB as u64, MIB),
        (7 * SS, 3 * SECTOR_SIZE),
        (cap - SS, SECTOR_SIZE),
    ];
    for (i, &(offset, len)) in cases.iter().enumerate() {
        let seed = 100 + i as u64;
        let back = write_sync(dev, offset, pattern_buf(len, seed, offset));
        assert_eq!(back.len(), len, "{CHECK}: write buffer came back with another length");
        assert_pattern(CHECK, back.as_slice(), seed, offset);
        let got = read_sync(dev, offset, len);
        assert_pattern(CHECK, got.as_slice(), seed, offset);
    }
    // Neighbours of the 1 MiB write and of the 3-sector write are untouched.
    assert_zeros(
        CHECK,
        read_sync(dev, MIB as u64 - SS, SECTOR_SIZE).as_slice(),
        MIB as u64 - SS,
    );
    assert_zeros(
        CHECK,
        read_sync(dev, 2 * MIB as u64, SECTOR_SIZE).as_slice(),
        2 * MIB as u64,
    );
    assert_zeros(CHECK, read_sync(dev, 6 * SS, SECTOR_SIZE).as_slice(), 6 * SS);
    assert_zeros(CHECK, read_sync(dev, 10 * SS, SECTOR_SIZE).as_slice(), 10 * SS);

    // A 4-sector buffer with len() 2 sectors moves only 2 sectors, both ways.
    let offset = 64 * SS;
    let mut big = IoBuf::new(4 * SECTOR_SIZE);
    fill_pattern(big.as_mut_slice(), 200, offset);
    big.set_len(2 * SECTOR_SIZE);
    let back = write_sync(dev, offset, big);
    assert_eq!(
        back.len(),
        2 * SECTOR_SIZE,
        "{CHECK}: buffer length changed by the write"
    );
    assert_eq!(
        back.capacity(),
        4 * SECTOR_SIZE,
        "{CHECK}: buffer capacity changed by the write"
    );
    let got = read_sync(dev, offset, 4 * SECTOR_SIZE);
    assert_pattern(CHECK, &got.as_slice()[..2 * SECTOR_SIZE], 200, offset);
    assert_zeros(CHECK, &got.as_slice()[2 * SECTOR_SIZE..], offset + 2 * SS);

    // An overwrite replaces the data.
    write_sync(dev, 0, pattern_buf(SECTOR_SIZE, 300, 0));
    assert_pattern(CHECK, read_sync(dev, 0, SECTOR_SIZE).as_slice(), 300, 0);
    assert_eq!(dev.in_flight(), 0, "{CHECK}: I/O left in flight");
}

/// A fresh device reads zeros everywhere it was never written: the start, the middle and the
/// last 64 KiB.
pub fn check_unwritten_reads_zeros<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_unwritten_reads_zeros";
    preconditions(CHECK, dev);
    let cap = dev.info().capacity_bytes;
    let mid = (cap / 2) / SS * SS;
    for (offset, len) in [
        (0, 16 * SECTOR_SIZE),
        (mid, SECTOR_SIZE),
        (cap - 16 * SS, 16 * SECTOR_SIZE),
    ] {
        assert_zeros(CHECK, read_sync(dev, offset, len).as_slice(), offset);
    }
}

/// Many I/Os in flight at once (up to 64, distinct tags, lengths 1–3 sectors): each completion
/// carries its own tag, kind, offset and buffer; write buffers come back unchanged and each read
/// holds the data of the write with the same index.
pub fn check_many_in_flight<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_many_in_flight";
    preconditions(CHECK, dev);
    let n = dev.info().max_in_flight.min(64);
    let place = |i: usize| (i as u64 * 4 * SS, (i % 3 + 1) * SECTOR_SIZE);

    for i in 0..n {
        let (offset, len) = place(i);
        dev.submit_write(offset, pattern_buf(len, 1000 + i as u64, offset), 1000 + i as u64)
            .unwrap_or_else(|e| panic!("{CHECK}: write {i} refused: {e}"));
        assert_eq!(dev.in_flight(), i + 1, "{CHECK}: in_flight after {} submits", i + 1);
    }
    submit_all(dev, n);
    let mut seen = BTreeMap::new();
    for c in reap_n(dev, n) {
        let i = c.tag.checked_sub(1000).filter(|&i| (i as usize) < n);
        let i = i.unwrap_or_else(|| panic!("{CHECK}: completion with unknown tag {}", c.tag)) as usize;
        assert!(seen.insert(i, ()).is_none(), "{CHECK}: tag {} completed twice", c.tag);
        let (offset, len) = place(i);
        assert_eq!(c.kind, IoKind::Write, "{CHECK}: tag {} kind", c.tag);
        assert_eq!(c.offset, offset, "{CHECK}: tag {} offset", c.tag);
        if let Err(e) = &c.result {
            panic!("{CHECK}: write tag {} failed: {e}", c.tag);
        }
        let buf = c
            .buf
            .unwrap_or_else(|| panic!("{CHECK}: write tag {} came back without its buffer", c.tag));
        assert_eq!(buf.len(), len, "{CHECK}: tag {} buffer length", c.tag);
        assert_pattern(CHECK, buf.as_slice(), 1000 + i as u64, offset);
    }

    for i in 0..n {
        let (offset, len) = place(i);
        let mut buf = IoBuf::new(len);
        buf.as_mut_slice().fill(0x5A);
        dev.submit_read(offset, buf, 5000 + i as u64)
            .unwrap_or_else(|e| panic!("{CHECK}: read {i} refused: {e}"));
    }
    submit_all(dev, n);
    let mut seen = BTreeMap::new();
    for c in reap_n(dev, n) {
        let i = c.tag.checked_sub(5000).filter(|&i| (i as usize) < n);
        let i = i.unwrap_or_else(|| panic!("{CHECK}: completion with unknown tag {}", c.tag)) as usize;
        assert!(seen.insert(i, ()).is_none(), "{CHECK}: tag {} completed twice", c.tag);
        let (offset, len) = place(i);
        assert_eq!(c.kind, IoKind::Read, "{CHECK}: tag {} kind", c.tag);
        assert_eq!(c.offset, offset, "{CHECK}: tag {} offset", c.tag);
        if let Err(e) = &c.result {
            panic!("{CHECK}: read tag {} failed: {e}", c.tag);
        }
        let buf = c
            .buf
            .unwrap_or_else(|| panic!("{CHECK}: read tag {} came back without its buffer", c.tag));
        assert_eq!(buf.len(), len, "{CHECK}: tag {} buffer length", c.tag);
        assert_pattern(CHECK, buf.as_slice(), 1000 + i as u64, offset);
    }
    assert_eq!(dev.in_flight(), 0, "{CHECK}: I/O left in flight");
}

/// Misaligned offsets and I/O past the end (including offsets whose end overflows `u64`) are
/// refused with `Invalid`, the buffer comes back unchanged, nothing is queued, and the device
/// keeps working. Zero and misaligned lengths cannot be expressed with an [`IoBuf`] (its length
/// is always a positive multiple of 4 KiB); [`check_io`], which every backend calls, is checked
/// to refuse them.
pub fn check_invalid_refused<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_invalid_refused";
    preconditions(CHECK, dev);
    let cap = dev.info().capacity_bytes;
    let cases: [(&str, u64, usize); 6] = [
        ("misaligned offset", 512, SECTOR_SIZE),
        ("misaligned offset", SS + 1, 2 * SECTOR_SIZE),
        ("offset at the end", cap, SECTOR_SIZE),
        ("end past the end", cap - SS, 2 * SECTOR_SIZE),
        ("far past the end", cap + 1024 * SS, SECTOR_SIZE),
        ("end overflows u64", u64::MAX - (SS - 1), SECTOR_SIZE),
    ];
    for (what, offset, len) in cases {
        for kind in [IoKind::Read, IoKind::Write] {
            let buf = pattern_buf(len, 7, offset);
            let r = match kind {
                IoKind::Read => dev.submit_read(offset, buf, 1),
                _ => dev.submit_write(offset, buf, 1),
            };
            match r {
                Err(SubmitError::Invalid { reason, buf }) => {
                    assert!(!reason.is_empty(), "{CHECK}: {what}: empty reason");
                    let buf = buf.unwrap_or_else(|| panic!("{CHECK}: {what} {kind}: buffer not returned"));
                    assert_eq!(buf.len(), len, "{CHECK}: {what} {kind}: returned buffer length");
                    assert_pattern(CHECK, buf.as_slice(), 7, offset);
                }
                Err(e) => {
                    panic!("{CHECK}: {what} {kind} at {offset} (+{len}): want Invalid, got {e}")
                }
                Ok(()) => panic!("{CHECK}: {what} {kind} at {offset} (+{len}) was accepted"),
            }
            assert_eq!(dev.in_flight(), 0, "{CHECK}: a refused {kind} counts in in_flight");
        }
    }
    let info = dev.info();
    assert!(check_io(info, 0, 0).is_err(), "{CHECK}: check_io accepts a zero length");
    assert!(
        check_io(info, 0, 100).is_err(),
        "{CHECK}: check_io accepts a misaligned length"
    );
    assert!(
        check_io(info, 0, SECTOR_SIZE).is_ok(),
        "{CHECK}: check_io refuses a good I/O"
    );
    // Still usable.
    write_sync(dev, 0, pattern_buf(SECTOR_SIZE, 8, 0));
    assert_pattern(CHECK, read_sync(dev, 0, SECTOR_SIZE).as_slice(), 8, 0);
}

fn expect_queue_full(check: &str, r: Result<(), SubmitError>, what: &str, want_len: Option<usize>) {
    match r {
        Err(SubmitError::QueueFull(buf)) => {
            assert_eq!(
                buf.as_ref().map(IoBuf::len),
                want_len,
                "{check}: {what}: QueueFull returned the wrong buffer"
            );
        }
        Err(e) => panic!("{check}: {what}: want QueueFull, got {e}"),
        Ok(()) => panic!("{check}: {what}: accepted past max_in_flight"),
    }
}

/// Once `max_in_flight` I/Os are queued, reads, writes and flushes are refused with `QueueFull`
/// (buffer returned), before and after `submit`; after reaping one, a submit is accepted again,
/// and every I/O completes.
pub fn check_queue_full<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_queue_full";
    preconditions(CHECK, dev);
    let m = dev.info().max_in_flight;
    assert!(
        m <= MAX_CHECKED_IN_FLIGHT,
        "{CHECK}: max_in_flight {m} is over {MAX_CHECKED_IN_FLIGHT}"
    );
    let sectors = dev.info().capacity_bytes / SS;
    for i in 0..m {
        dev.submit_read((i as u64 % sectors) * SS, IoBuf::new(SECTOR_SIZE), i as u64)
            .unwrap_or_else(|e| panic!("{CHECK}: read {i} of {m} refused: {e}"));
    }
    assert_eq!(dev.in_flight(), m, "{CHECK}: in_flight with the queue full");
    expect_queue_full(
        CHECK,
        dev.submit_read(0, IoBuf::new(2 * SECTOR_SIZE), 1),
        "read",
        Some(2 * SECTOR_SIZE),
    );
    expect_queue_full(
        CHECK,
        dev.submit_write(0, IoBuf::new(SECTOR_SIZE), 1),
        "write",
        Some(SECTOR_SIZE),
    );
    expect_queue_full(CHECK, dev.submit_flush(1), "flush", None);
    submit_all(dev, m);
    expect_queue_full(
        CHECK,
        dev.submit_read(0, IoBuf::new(SECTOR_SIZE), 1),
        "read after submit",
        Some(SECTOR_SIZE),
    );
    assert_eq!(dev.in_flight(), m, "{CHECK}: in_flight after refused submits");

    let mut done = reap_at_least(dev, 1);
    dev.submit_read(0, IoBuf::new(SECTOR_SIZE), m as u64)
        .unwrap_or_else(|e| panic!("{CHECK}: read refused after a completion was reaped: {e}"));
    submit_all(dev, 1);
    let left = dev.in_flight();
    done.extend(reap_n(dev, left));
    assert_eq!(done.len(), m + 1, "{CHECK}: completions");
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert!(
        tags.iter().copied().eq(0..=m as u64),
        "{CHECK}: tags of the completions"
    );
    for c in &done {
        if let Err(e) = &c.result {
            panic!("{CHECK}: read tag {} failed: {e}", c.tag);
        }
        assert_zeros(CHECK, c.buf.as_ref().expect("read buffer").as_slice(), c.offset);
    }
    assert_eq!(dev.in_flight(), 0, "{CHECK}: I/O left in flight");
}

/// A flush completes `Ok` with its tag, kind `Flush`, offset 0 and no buffer: on an idle device,
/// after completed writes, and in one batch with writes; the data is there afterwards.
pub fn check_flush<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_flush";
    preconditions(CHECK, dev);
    let flush = |dev: &mut D, tag: u64| {
        dev.submit_flush(tag)
            .unwrap_or_else(|e| panic!("{CHECK}: flush refused: {e}"));
        submit_all(dev, 1);
        let c = reap_n(dev, 1).pop().expect("one completion");
        assert_flush(CHECK, &c, tag);
    };
    flush(dev, 42);
    for i in 0..4u64 {
        write_sync(dev, i * SS, pattern_buf(SECTOR_SIZE, 400 + i, i * SS));
    }
    flush(dev, 43);

    let n = 4usize.min(dev.info().max_in_flight - 1);
    for i in 0..n as u64 {
        let offset = (16 + i) * SS;
        dev.submit_write(offset, pattern_buf(SECTOR_SIZE, 500 + i, offset), i)
            .unwrap_or_else(|e| panic!("{CHECK}: write refused: {e}"));
    }
    dev.submit_flush(99)
        .unwrap_or_else(|e| panic!("{CHECK}: flush refused: {e}"));
    submit_all(dev, n + 1);
    for c in reap_n(dev, n + 1) {
        if c.kind == IoKind::Flush {
            assert_flush(CHECK, &c, 99);
        } else if let Err(e) = &c.result {
            panic!("{CHECK}: write tag {} failed: {e}", c.tag);
        }
    }
    for i in 0..4u64 {
        assert_pattern(CHECK, read_sync(dev, i * SS, SECTOR_SIZE).as_slice(), 400 + i, i * SS);
    }
    for i in 0..n as u64 {
        let offset = (16 + i) * SS;
        assert_pattern(CHECK, read_sync(dev, offset, SECTOR_SIZE).as_slice(), 500 + i, offset);
    }
}

fn assert_flush(check: &str, c: &Completion, tag: u64) {
    assert_eq!(c.kind, IoKind::Flush, "{check}: completion kind");
    assert_eq!(c.tag, tag, "{check}: flush tag");
    assert_eq!(c.offset, 0, "{check}: flush offset");
    assert!(c.buf.is_none(), "{check}: flush came back with a buffer");
    if let Err(e) = &c.result {
        panic!("{check}: flush failed: {e}");
    }
}

/// `reap(out, 0)` on an idle device returns 0 at once and leaves `out` alone; `reap(out, n)` with
/// `n` over the number in flight does not hang and returns them all in one call; an I/O queued
/// but not yet submitted does not make `reap` hang either, and completes once submitted.
pub fn check_reap_bounds<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_reap_bounds";
    preconditions(CHECK, dev);
    let mut out = Vec::new();
    let t = Instant::now();
    assert_eq!(dev.reap(&mut out, 0).expect("reap"), 0, "{CHECK}: idle reap(0)");
    assert_eq!(dev.reap(&mut out, 5).expect("reap"), 0, "{CHECK}: idle reap(5)");
    assert!(out.is_empty(), "{CHECK}: idle reap added completions");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{CHECK}: idle reap took {:?}",
        t.elapsed()
    );

    dev.submit_read(0, IoBuf::new(SECTOR_SIZE), 1).expect("submit_read");
    dev.submit_write(SS, pattern_buf(SECTOR_SIZE, 9, SS), 2)
        .expect("submit_write");
    submit_all(dev, 2);
    let got = dev.reap(&mut out, 100).expect("reap");
    assert_eq!(got, 2, "{CHECK}: reap(100) with 2 in flight must return both");
    assert_eq!(out.len(), 2, "{CHECK}: completions added");
    assert_eq!(dev.in_flight(), 0, "{CHECK}: in_flight after reaping everything");

    // Queued, not submitted: reap must not wait for it.
    out.clear();
    dev.submit_read(SS, IoBuf::new(SECTOR_SIZE), 3).expect("submit_read");
    let got = dev.reap(&mut out, 1).expect("reap");
    assert!(got <= 1, "{CHECK}: reap returned {got} with one I/O queued");
    if got == 0 {
        submit_all(dev, 1);
        out.extend(reap_n(dev, 1));
    }
    assert_eq!(out.len(), 1, "{CHECK}: the queued read completes");
    assert_eq!(out[0].tag, 3, "{CHECK}: tag of the queued read");
    assert_pattern(CHECK, out[0].buf.as_ref().expect("read buffer").as_slice(), 9, SS);
    assert_eq!(dev.in_flight(), 0, "{CHECK}: in_flight at the end");
}

/// Buffers of a [`BufPool`] registered with [`BlockDevice::register_buffers`] move data correctly,
/// alone and mixed with unregistered buffers in one batch, with `len()` below the pool's buffer
/// length; registering the same pool again succeeds; buffers of a second pool work whether or
/// not its registration succeeds.
pub fn check_registered_buffers<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_registered_buffers";
    preconditions(CHECK, dev);
    let name = dev.info().name.clone();
    let count = MIN_IN_FLIGHT / 2;
    let mut pool = BufPool::new(count, 16 * SECTOR_SIZE);
    dev.register_buffers(&pool).unwrap_or_else(|e| {
        panic!(
            "{CHECK}: {name}: registering a {}-byte pool failed: {e}",
            count * pool.buf_len()
        )
    });
    dev.register_buffers(&pool)
        .unwrap_or_else(|e| panic!("{CHECK}: {name}: registering the same pool again failed: {e}"));
    let mut other = BufPool::new(2, 2 * SECTOR_SIZE);
    let _ = dev.register_buffers(&other); // May fail; the buffers must work either way.

    let place = |i: usize| (2 * MIB as u64 + i as u64 * 16 * SS, (i % 16 + 1) * SECTOR_SIZE);
    let n = count + 3;
    for i in 0..n {
        let (offset, len) = place(i);
        let mut buf = match i {
            _ if i < count => pool.take().expect("pool buffer"),
            _ if i < count + 2 => other.take().expect("second pool buffer"),
            _ => IoBuf::new(len),
        };
        let len = len.min(buf.capacity());
        buf.set_len(len);
        fill_pattern(buf.as_mut_slice(), 600 + i as u64, offset);
        dev.submit_write(offset, buf, i as u64)
            .unwrap_or_else(|e| panic!("{CHECK}: write {i} refused: {e}"));
    }
    submit_all(dev, n);
    let mut lens = BTreeMap::new();
    for c in reap_n(dev, n) {
        if let Err(e) = &c.result {
            panic!("{CHECK}: write tag {} failed: {e}", c.tag);
        }
        let buf = c.buf.expect("write buffer");
        lens.insert(c.tag, buf.len());
        match buf.reg_slot() {
            Some(s) if s.pool_id == pool.id() => pool.put(buf),
            Some(_) => other.put(buf),
            None => {}
        }
    }
    assert_eq!(pool.available(), count, "{CHECK}: pool buffers lost");

    for i in 0..n {
        let (offset, _) = place(i);
        let mut buf = if i % 2 == 0 {
            pool.take().expect("pool buffer")
        } else {
            IoBuf::new(16 * SECTOR_SIZE)
        };
        buf.set_len(lens[&(i as u64)]);
        buf.as_mut_slice().fill(0x5A);
        dev.submit_read(offset, buf, i as u64)
            .unwrap_or_else(|e| panic!("{CHECK}: read {i} refused: {e}"));
    }
    submit_all(dev, n);
    for c in reap_n(dev, n) {
        if let Err(e) = &c.result {
            panic!("{CHECK}: read tag {} failed: {e}", c.tag);
        }
        let buf = c.buf.expect("read buffer");
        let (offset, _) = place(c.tag as usize);
        assert_eq!(c.offset, offset, "{CHECK}: read tag {} offset", c.tag);
        assert_pattern(CHECK, buf.as_slice(), 600 + c.tag, offset);
        if buf.reg_slot().is_some() {
            pool.put(buf);
        }
    }
    assert_eq!(pool.available(), count, "{CHECK}: pool buffers lost");
    assert_eq!(dev.in_flight(), 0, "{CHECK}: I/O left in flight");
}

/// `in_flight()` counts every I/O from a successful submit until its completion is reaped:
/// unchanged by `submit()` and by refused submits, down by exactly what each `reap` returns.
pub fn check_in_flight_accounting<D: BlockDevice + ?Sized>(dev: &mut D) {
    const CHECK: &str = "check_in_flight_accounting";
    preconditions(CHECK, dev);
    for i in 0..3u64 {
        dev.submit_write(i * SS, pattern_buf(SECTOR_SIZE, i, i * SS), i)
            .expect("submit_write");
    }
    dev.submit_flush(3).expect("submit_flush");
    dev.submit_read(8 * SS, IoBuf::new(SECTOR_SIZE), 4)
        .expect("submit_read");
    assert_eq!(dev.in_flight(), 5, "{CHECK}: after 5 submits");
    let r = dev.submit_read(1, IoBuf::new(SECTOR_SIZE), 5);
    assert!(
        matches!(r, Err(SubmitError::Invalid { .. })),
        "{CHECK}: misaligned read accepted"
    );
    assert_eq!(dev.in_flight(), 5, "{CHECK}: after a refused submit");
    submit_all(dev, 5);
    assert_eq!(dev.in_flight(), 5, "{CHECK}: after submit()");
    let mut out = Vec::new();
    let mut left = 5;
    for _ in 0..MAX_REAP_CALLS {
        if left == 0 {
            break;
        }
        let got = dev.reap(&mut out, 1).expect("reap");
        assert!(got >= 1, "{CHECK}: reap(1) with {left} in flight returned nothing");
        left -= got;
        assert_eq!(dev.in_flight(), left, "{CHECK}: in_flight after reaping {}", 5 - left);
    }
    assert_eq!(out.len(), 5, "{CHECK}: completions");
    assert_eq!(dev.reap(&mut out, 0).expect("reap"), 0, "{CHECK}: extra completions");
}

/// Runs every check, each on a fresh device from `make`.
///
/// # Panics
/// On the first failing check.
pub fn check_all<D: BlockDevice>(mut make: impl FnMut() -> D) {
    check_info(&mut make());
    check_write_read_roundtrip(&mut make());
    check_unwritten_reads_zeros(&mut make());
    check_many_in_flight(&mut make());
    check_invalid_refused(&mut make());
    check_queue_full(&mut make());
    check_flush(&mut make());
    check_reap_bounds(&mut make());
    check_registered_buffers(&mut make());
    check_in_flight_accounting(&mut make());
}

/// Expands into a module `$modname` with one `#[test]` per conformance check. `$make` is an
/// expression evaluated afresh in each test to make a fresh device (it can name items of the
/// invoking module: the generated module does `use super::*`).
///
/// ```
/// use bolide_drivers::sim::{SimConfig, SimDevice};
///
/// fn make() -> SimDevice {
///     SimDevice::new(SimConfig::new("sim", 16 << 20, 1))
/// }
///
/// bolide_drivers::conformance_suite!(sim, make());
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($modname:ident, $make:expr) => {
        $crate::conformance_suite!(@tests $modname, $make, [
            info => check_info,
            write_read_roundtrip => check_write_read_roundtrip,
            unwritten_reads_zeros => check_unwritten_reads_zeros,
            many_in_flight => check_many_in_flight,
            invalid_refused => check_invalid_refused,
            queue_full => check_queue_full,
            flush => check_flush,
            reap_bounds => check_reap_bounds,
            registered_buffers => check_registered_buffers,
            in_flight_accounting => check_in_flight_accounting,
        ]);
    };
    (@tests $modname:ident, $make:expr, [$($test:ident => $check:ident),* $(,)?]) => {
        mod $modname {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $test() {
                    let mut dev = $make;
                    $crate::conformance::$check(&mut dev);
                }
            )*
        }
    };
}
