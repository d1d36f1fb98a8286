//! The backup catalogue of a policy's target: one line per run, kept as `catalogue.txt` at the
//! target's root, each run's files in a sub-location named by its id.
//!
//! ```text
//! bolide-backup catalogue 1
//! run <id> kind=<full|incremental> full=<id of the chain's full> after=<unix s|-> started_ms=<unix ms> finished_ms=<unix ms> records=<n> deletes=<n> bytes=<n> result=<ok|failed: what>
//! ```
//!
//! A chain is a full run and the incrementals taken after it, each incremental's `after` (its
//! `--modified-after`) the start of the chain's previous successful run less an overlap, so no
//! write acknowledged before a run started falls between two runs (`docs/OPERATIONS.md`,
//! "Backup policies"). Retention removes whole chains only; restore to a time picks one chain.

use std::time::Duration;

use crate::target::Target;

pub const CATALOGUE_FILE: &str = "catalogue.txt";
const MAGIC: &str = "bolide-backup catalogue 1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

/// One backup run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run's sub-location under the target (`YYYYMMDDTHHMMSS.mmmZ-full` / `-incr`).
    pub id: String,
    pub kind: Kind,
    /// The chain's full run (the run itself for a full).
    pub full: String,
    /// An incremental's cut-off: records last updated at or after this (Unix seconds).
    pub after: Option<i64>,
    pub started_ms: i64,
    pub finished_ms: i64,
    pub records: u64,
    pub deletes: u64,
    pub bytes: u64,
    /// `ok`, or `failed: <error>` (one line).
    pub result: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.result == "ok"
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis((self.finished_ms - self.started_ms).max(0) as u64)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalogue {
    /// In the order the runs started.
    pub runs: Vec<Run>,
}

impl Catalogue {
    pub fn to_text(&self) -> String {
        let mut out = format!("{MAGIC}\n");
        for r in &self.runs {
            out.push_str(&format!(
                "run {} kind={} full={} after={} started_ms={} finished_ms={} records={} deletes={} bytes={} result={}\n",
                r.id,
                r.kind.as_str(),
                r.full,
                r.after.map_or("-".to_string(), |a| a.to_string()),
                r.started_ms,
                r.finished_ms,
                r.records,
                r.deletes,
                r.bytes,
                r.result.replace('\n', " ")
            ));
        }
        out
    }

    /// # Errors
    /// Not a catalogue, or a line that does not parse (`name:line: what`).
    pub fn parse(text: &str, name: &str) -> Result<Catalogue, String> {
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some(MAGIC) {
            return Err(format!("{name}:1: not a bolide-backup catalogue"));
        }
        let mut cat = Catalogue::default();
        for (i, line) in lines {
            let bad = || format!("{name}:{}: bad catalogue line {line:?}", i + 1);
            let (head, result) = line.split_once(" result=").ok_or_else(bad)?;
            let mut parts = head.split(' ');
            if parts.next() != Some("run") {
                return Err(bad());
            }
            let id = parts.next().filter(|s| !s.is_empty() && !s.contains('/')).ok_or_else(bad)?;
            let mut field = |key: &str| -> Result<String, String> {
                let p = parts.next().ok_or_else(bad)?;
                p.strip_prefix(key)
                    .and_then(|v| v.strip_prefix('='))
                    .map(str::to_string)
                    .ok_or_else(bad)
            };
            let kind = match field("kind")?.as_str() {
                "full" => Kind::Full,
                "incremental" => Kind::Incremental,
                _ => return Err(bad()),
            };
            let full = field("full")?;
            let after = match field("after")?.as_str() {
                "-" => None,
                a => Some(a.parse().map_err(|_| bad())?),
            };
            let num = |s: String| s.parse::<i64>().map_err(|_| bad());
            let started_ms = num(field("started_ms")?)?;
            let finished_ms = num(field("finished_ms")?)?;
            let records = num(field("records")?)? as u64;
            let deletes = num(field("deletes")?)? as u64;
            let bytes = num(field("bytes")?)? as u64;
            cat.runs.push(Run {
                id: id.to_string(),
                kind,
                full,
                after,
                started_ms,
                finished_ms,
                records,
                deletes,
                bytes,
                result: result.to_string(),
            });
        }
        Ok(cat)
    }

    /// The catalogue of `root` (empty when it has none yet).
    ///
    /// # Errors
    /// The store cannot be read, or the catalogue is damaged (never read as empty).
    pub fn load(root: &Target) -> Result<Catalogue, String> {
        match root.read_small(CATALOGUE_FILE)? {
            None => Ok(Catalogue::default()),
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| format!("{}: not text", root.describe(CATALOGUE_FILE)))?;
                Catalogue::parse(&text, &root.describe(CATALOGUE_FILE))
            }
        }
    }

    /// Replaces `root`'s catalogue atomically.
    pub fn save(&self, root: &Target) -> Result<(), String> {
        root.create_dir()?;
        root.write_small(CATALOGUE_FILE, self.to_text().as_bytes())
    }

    /// The newest successful full run.
    pub fn newest_full(&self) -> Option<&Run> {
        self.runs.iter().rev().find(|r| r.ok() && r.kind == Kind::Full)
    }

    /// The next incremental's (full id, `--modified-after` in Unix seconds): the start of the
    /// newest chain's last successful run, less `overlap_secs`, rounded down to the second.
    /// `None`: no successful full yet (the next run must be a full).
    pub fn next_incremental(&self, overlap_secs: u64) -> Option<(String, i64)> {
        let full = self.newest_full()?;
        let last = self
            .runs
            .iter()
            .rev()
            .find(|r| r.ok() && r.full == full.id)
            .expect("the full itself is in its chain");
        Some((
            full.id.clone(),
            last.started_ms.div_euclid(1000) - overlap_secs as i64,
        ))
    }

    /// The successful runs to restore for the state at `t_ms` (Unix ms), in order: the newest
    /// full that finished at or before `t_ms`, then its incrementals that finished at or before
    /// it.
    ///
    /// # Errors
    /// No successful full finished by then.
    pub fn chain_at(&self, t_ms: i64) -> Result<Vec<&Run>, String> {
        let full = self
            .runs
            .iter()
            .rev()
            .find(|r| r.ok() && r.kind == Kind::Full && r.finished_ms <= t_ms)
            .ok_or_else(|| format!("no successful full backup finished at or before {t_ms} ms"))?;
        Ok(self
            .runs
            .iter()
            .filter(|r| r.ok() && r.full == full.id && r.finished_ms <= t_ms)
            .collect())
    }

    /// Retention: the runs to delete so that only the newest `keep_chains` chains (a
    /// successful full and everything after it up to the next one) remain. Whole chains only:
    /// never an incremental whose full is kept, never a kept incremental whose full goes. Failed
    /// runs older than the oldest kept full go too.
    pub fn expired(&self, keep_chains: usize) -> Vec<&Run> {
        let fulls: Vec<&Run> = self.runs.iter().filter(|r| r.ok() && r.kind == Kind::Full).collect();
        if keep_chains == 0 || fulls.len() <= keep_chains {
            return Vec::new();
        }
        let oldest_kept = fulls[fulls.len() - keep_chains];
        let kept: std::collections::HashSet<&str> = fulls[fulls.len() - keep_chains..]
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        self.runs
            .iter()
            .filter(|r| !kept.contains(r.full.as_str()) && r.started_ms < oldest_kept.started_ms)
            .collect()
    }
}

/// A run's id: its start time (UTC, to the millisecond) and kind.
pub fn run_id(started_ms: i64, kind: Kind) -> String {
    let secs = started_ms.div_euclid(1000);
    let ms = started_ms.rem_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{ms:03}Z-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        match kind {
            Kind::Full => "full",
            Kind::Incremental => "incr",
        }
    )
}

/// (year, month, day) of days since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl std::fmt::Display for Catalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<26} {:<11} {:<26} {:>12} {:>10} {:>8} {:>12} {:>9}  result",
            "run", "kind", "full", "after", "records", "deletes", "bytes", "seconds"
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "{:<26} {:<11} {:<26} {:>12} {:>10} {:>8} {:>12} {:>9.2}  {}",
                r.id,
                r.kind.as_str(),
                r.full,
                r.after.map_or("-".to_string(), |a| a.to_string()),
                r.records,
                r.deletes,
                r.bytes,
                r.duration().as_secs_f64(),
                r.result
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(started_ms: i64, kind: Kind, full: &str, ok: bool) -> Run {
        Run {
            id: run_id(started_ms, kind),
            kind,
            full: if kind == Kind::Full {
                run_id(started_ms, kind)
            } else {
                full.to_string()
            },
            after: (kind == Kind::Incremental).then_some(started_ms / 1000 - 5),
            started_ms,
            finished_ms: started_ms + 500,
            records: 10,
            deletes: 1,
            bytes: 100,
            result: if ok { "ok".into() } else { "failed: store down".into() },
        }
    }

    /// fulls at 0, 10 s, 20 s with two incrementals each (one failed in the middle chain).
    fn sample() -> Catalogue {
        let mut c = Catalogue::default();
        for base in [0i64, 10_000, 20_000] {
            let f = run(base, Kind::Full, "", true);
            let fid = f.id.clone();
            c.runs.push(f);
            c.runs.push(run(base + 3000, Kind::Incremental, &fid, base != 10_000));
            c.runs.push(run(base + 6000, Kind::Incremental, &fid, true));
        }
        c
    }

    #[test]
    fn text_round_trip_and_damage() {
        let c = sample();
        assert_eq!(Catalogue::parse(&c.to_text(), "c").unwrap(), c);
        assert!(Catalogue::parse("x\n", "c").is_err());
        let mut t = c.to_text();
        t.push_str("run x kind=full full=x after=- started_ms=1\n");
        assert!(Catalogue::parse(&t, "c").unwrap_err().contains("c:11"));
    }

    #[test]
    fn ids_sort_by_time() {
        assert_eq!(run_id(1_709_210_096_123, Kind::Full), "20240229T123456.123Z-full");
        assert!(run_id(999, Kind::Incremental) < run_id(1000, Kind::Full));
    }

    #[test]
    fn chains_at_times() {
        let c = sample();
        assert!(c.chain_at(100).is_err(), "nothing finished yet");
        let ids = |v: Vec<&Run>| v.iter().map(|r| r.started_ms).collect::<Vec<_>>();
        assert_eq!(ids(c.chain_at(500).unwrap()), vec![0]);
        assert_eq!(ids(c.chain_at(9_999).unwrap()), vec![0, 3000, 6000]);
        // The failed incremental of the middle chain is skipped.
        assert_eq!(ids(c.chain_at(17_000).unwrap()), vec![10_000, 16_000]);
        assert_eq!(ids(c.chain_at(i64::MAX).unwrap()), vec![20_000, 23_000, 26_000]);
    }

    #[test]
    fn next_incremental_chains_to_the_newest_full() {
        let mut c = Catalogue::default();
        assert_eq!(c.next_incremental(5), None);
        c.runs.push(run(100_000, Kind::Full, "", true));
        let fid = c.runs[0].id.clone();
        assert_eq!(c.next_incremental(5), Some((fid.clone(), 95)));
        c.runs.push(run(200_000, Kind::Incremental, &fid, true));
        c.runs.push(run(300_000, Kind::Incremental, &fid, false));
        assert_eq!(c.next_incremental(5), Some((fid, 195)), "a failed run is no cut-off");
    }

    #[test]
    fn retention_deletes_whole_chains() {
        let c = sample();
        assert!(c.expired(3).is_empty());
        assert!(c.expired(0).is_empty(), "0 keeps everything");
        let gone: Vec<i64> = c.expired(2).iter().map(|r| r.started_ms).collect();
        assert_eq!(gone, vec![0, 3000, 6000]);
        let gone: Vec<i64> = c.expired(1).iter().map(|r| r.started_ms).collect();
        assert_eq!(gone, vec![0, 3000, 6000, 10_000, 13_000, 16_000]);
        // A failed full does not count as a chain: the chain before it is kept.
        let mut c2 = sample();
        c2.runs.push(run(30_000, Kind::Full, "", false));
        assert_eq!(c2.expired(1).len(), 6);
    }
}
