//! Key distributions: uniform, YCSB's scrambled zipfian, and YCSB's "latest".
//!
//! The zipfian generator is the one YCSB uses (`ZipfianGenerator`, after Gray et al., "Quickly
//! Generating Billion-Record Synthetic Databases", SIGMOD 1994): rank `r` (0 = hottest) is drawn
//! with probability proportional to `1 / (r + 1)^theta`, YCSB's default `theta = 0.99`.

use rand::Rng;

use super::workload::KeyDist;

/// YCSB's default zipfian constant.
pub const YCSB_ZIPFIAN_THETA: f64 = 0.99;

/// Zipfian ranks over `items` ranks.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `items` ranks (`items >= 2`, `0 < theta < 1`); computing `zeta(items)`
    /// costs `items` powers (about 0.2 s for 10 M).
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 2, "zipfian needs at least 2 items, got {items}");
        assert!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta must be in (0, 1), got {theta}"
        );
        let zetan: f64 = (1..=items).map(|i| 1.0 / (i as f64).powf(theta)).sum();
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipfian {
            items,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    /// A rank in `0..items`, 0 the most likely.
    pub fn next_rank(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.items - 1)
    }

    /// Probability of rank 0 (`1 / zeta(items)`).
    pub fn p_hottest(&self) -> f64 {
        1.0 / self.zetan
    }
}

/// FNV-1a over the 8 little-endian bytes of `x` (YCSB scrambles zipfian ranks with FNV).
pub fn fnv1a_64(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Draws integer keys from `start_key..` for one run phase.
#[derive(Clone, Debug)]
pub struct KeyChooser {
    dist: KeyDist,
    start_key: u64,
    loaded_keys: u64,
    zipf: Option<Zipfian>,
}

impl KeyChooser {
    /// Keys `start_key .. start_key + loaded_keys` exist before the run; inserts add keys after
    /// them. Zipfian and latest draw ranks over `loaded_keys` items (YCSB grows the item count
    /// with inserts; here it stays at the loaded count).
    pub fn new(dist: KeyDist, start_key: u64, loaded_keys: u64, theta: f64) -> KeyChooser {
        assert!(loaded_keys >= 1, "a key space of at least one key");
        let zipf = (dist != KeyDist::Uniform && loaded_keys >= 2).then(|| Zipfian::new(loaded_keys, theta));
        KeyChooser {
            dist,
            start_key,
            loaded_keys,
            zipf,
        }
    }

    /// A key to read or update, given that keys `start_key .. end_key` exist now
    /// (`end_key >= start_key + loaded_keys`: the loaded keys plus those inserted so far).
    pub fn next_key(&self, rng: &mut impl Rng, end_key: u64) -> u64 {
        let existing = end_key - self.start_key;
        debug_assert!(existing >= self.loaded_keys);
        match (&self.zipf, self.dist) {
            (None, _) | (_, KeyDist::Uniform) => self.start_key + rng.gen_range(0..existing),
            (Some(z), KeyDist::Zipfian) => self.start_key + fnv1a_64(z.next_rank(rng)) % self.loaded_keys,
            (Some(z), KeyDist::Latest) => end_key - 1 - z.next_rank(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const DRAWS: usize = 200_000;

    fn counts(f: impl Fn(&mut ChaCha8Rng) -> u64, n: usize) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut c = vec![0u64; n];
        for _ in 0..DRAWS {
            c[f(&mut rng) as usize] += 1;
        }
        c
    }

    #[test]
    fn zipfian_ranks_follow_the_power_law() {
        let n = 1000;
        let z = Zipfian::new(n, YCSB_ZIPFIAN_THETA);
        let c = counts(|r| z.next_rank(r), n as usize);
        let share = |i: usize| c[i] as f64 / DRAWS as f64;
        // Rank 0 has p = 1/zeta(1000, 0.99) ~ 0.134; rank 1 p0 / 2^0.99; ranks 2.. follow the
        // approximation, so only the head is checked tightly.
        assert!((share(0) - z.p_hottest()).abs() < 0.01, "rank 0 share {}", share(0));
        assert!(
            (share(1) - z.p_hottest() / 2f64.powf(0.99)).abs() < 0.01,
            "rank 1 share {}",
            share(1)
        );
        // The top 10 % of ranks take most draws; the bottom half little.
        let top: u64 = c[..100].iter().sum();
        let bottom: u64 = c[500..].iter().sum();
        assert!(top as f64 / DRAWS as f64 > 0.6, "top 10% of ranks got {top}");
        assert!((bottom as f64 / DRAWS as f64) < 0.15, "bottom half got {bottom}");
        assert!(c.iter().all(|&x| x < DRAWS as u64), "every rank below n");
    }

    #[test]
    fn uniform_covers_the_key_space_evenly() {
        let kc = KeyChooser::new(KeyDist::Uniform, 1000, 100, YCSB_ZIPFIAN_THETA);
        let c = counts(|r| kc.next_key(r, 1100) - 1000, 100);
        let expect = DRAWS as f64 / 100.0;
        assert!(c.iter().all(|&x| (x as f64 - expect).abs() < expect * 0.15), "{c:?}");
    }

    #[test]
    fn scrambled_zipfian_is_skewed_but_spread() {
        let n = 1000u64;
        let kc = KeyChooser::new(KeyDist::Zipfian, 0, n, YCSB_ZIPFIAN_THETA);
        let c = counts(|r| kc.next_key(r, n), n as usize);
        let mut sorted = c.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        // Skew: the hottest key gets over 10 % (rank 0 alone), the 10 hottest over a third.
        assert!(sorted[0] as f64 > 0.10 * DRAWS as f64, "hottest {}", sorted[0]);
        assert!(sorted[..10].iter().sum::<u64>() as f64 > 0.33 * DRAWS as f64);
        // Spread: the hottest key is not simply key 0, and hot keys are not all at the front.
        let hottest = c.iter().position(|&x| x == sorted[0]).unwrap();
        assert_eq!(hottest as u64, fnv1a_64(0) % n);
        let front: u64 = c[..100].iter().sum();
        assert!((front as f64) < 0.5 * DRAWS as f64, "first 100 keys got {front}");
    }

    #[test]
    fn latest_favours_the_newest_keys() {
        let kc = KeyChooser::new(KeyDist::Latest, 0, 1000, YCSB_ZIPFIAN_THETA);
        // 1000 loaded, 200 inserted since: keys 0..1200 exist, 1199 is the newest.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut newest = 0;
        let mut recent = 0;
        for _ in 0..DRAWS {
            let k = kc.next_key(&mut rng, 1200);
            assert!(k < 1200, "key {k} does not exist yet");
            newest += u64::from(k == 1199);
            recent += u64::from(k >= 1100);
        }
        assert!(newest as f64 > 0.10 * DRAWS as f64, "newest key drawn {newest} times");
        assert!(
            recent as f64 > 0.6 * DRAWS as f64,
            "100 newest keys drawn {recent} times"
        );
    }
}
