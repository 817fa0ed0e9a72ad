//! The soak's readings (`/proc` and the ledger's files), its table of
//! samples and its verdict: flat after the warm-up, or by how much not.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::procs;
use super::report::mb;
use super::soak::{Counts, TRAFFIC};

/// What "flat" allows between the end of the warm-up and the end of the
/// traffic: RSS up by 10% or 5 MiB, whichever is larger (allocator arenas
/// and SQLite's page cache settle in steps); descriptors up by 16 (under
/// load the count moves with the requests in flight); the ledger's WAL up by 10% or 8 MiB
/// (SQLite checkpoints it every 1000 pages, ~4 MiB, and reuses the file).
pub(crate) const RSS_SLACK_PCT: f64 = 10.0;
pub(crate) const RSS_SLACK_BYTES: u64 = 5 << 20;
pub(crate) const FDS_SLACK: u64 = 16;
pub(crate) const WAL_SLACK_PCT: f64 = 10.0;
pub(crate) const WAL_SLACK_BYTES: u64 = 8 << 20;
/// The warm-up: the first tenth of the run.
const WARMUP_FRACTION: u32 = 10;

/// One reading.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) at: Duration,
    /// Requests done as expected, per kind (`TRAFFIC` order), and the rest.
    pub(crate) done: [u64; 6],
    pub(crate) unexpected: u64,
    pub(crate) sluice_rss: Option<u64>,
    /// `RssAnon`: heap, stacks and anonymous mappings, where a leak grows.
    /// The rest of VmRSS is file-backed: the binary's pages as code paths
    /// are first run, and SQLite's `-shm` WAL index, which grows with the
    /// WAL.
    pub(crate) sluice_anon: Option<u64>,
    pub(crate) sluice_hwm: Option<u64>,
    pub(crate) sluice_fds: Option<u64>,
    /// The three mocks together.
    pub(crate) mock_rss: Option<u64>,
    pub(crate) mock_fds: Option<u64>,
    pub(crate) ledger: Option<u64>,
    pub(crate) wal: Option<u64>,
}

fn fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

fn file_size(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.sum()
}

pub(crate) fn sample(
    at: Duration,
    counts: &Counts,
    sluice: u32,
    mocks: &[u32],
    ledger: &Path,
) -> Sample {
    let (done, unexpected) = counts.snapshot();
    let mut wal = ledger.as_os_str().to_owned();
    wal.push("-wal");
    Sample {
        at,
        done,
        unexpected,
        sluice_rss: procs::status_bytes(sluice, "VmRSS"),
        sluice_anon: procs::status_bytes(sluice, "RssAnon"),
        sluice_hwm: procs::status_bytes(sluice, "VmHWM"),
        sluice_fds: fds(sluice),
        mock_rss: sum(mocks.iter().map(|&p| procs::status_bytes(p, "VmRSS"))),
        mock_fds: sum(mocks.iter().map(|&p| fds(p))),
        ledger: file_size(ledger),
        wal: file_size(Path::new(&wal)),
    }
}

fn n(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

impl Sample {
    pub(crate) fn total(&self) -> u64 {
        self.done.iter().sum::<u64>() + self.unexpected
    }

    fn cells(&self, label: &str) -> Vec<String> {
        let mut row = vec![label.to_string()];
        row.extend(self.done.iter().map(u64::to_string));
        row.push(self.unexpected.to_string());
        row.extend([
            mb(self.sluice_rss),
            mb(self.sluice_anon),
            mb(self.sluice_hwm),
            n(self.sluice_fds),
            mb(self.mock_rss),
            n(self.mock_fds),
            mb(self.ledger),
            mb(self.wal),
        ]);
        row
    }

    /// One line of progress (stderr).
    pub(crate) fn line(&self) -> String {
        format!(
            "{:>6}: {} requests ({} unexpected), sluice RSS {} MiB (anon {}, peak {}), {} fds; mocks {} MiB, {} fds; ledger {} MiB, WAL {} MiB",
            clock(self.at),
            self.total(),
            self.unexpected,
            mb(self.sluice_rss),
            mb(self.sluice_anon),
            mb(self.sluice_hwm),
            n(self.sluice_fds),
            mb(self.mock_rss),
            n(self.mock_fds),
            mb(self.ledger),
            mb(self.wal),
        )
    }

    fn json(&self) -> Value {
        let done: serde_json::Map<String, Value> = TRAFFIC
            .iter()
            .zip(self.done)
            .map(|(k, d)| (k.label().to_string(), json!(d)))
            .collect();
        json!({
            "at_s": self.at.as_secs_f64().round(),
            "done": done,
            "unexpected": self.unexpected,
            "sluice_rss": self.sluice_rss,
            "sluice_rss_anon": self.sluice_anon,
            "sluice_hwm": self.sluice_hwm,
            "sluice_fds": self.sluice_fds,
            "mock_rss": self.mock_rss,
            "mock_fds": self.mock_fds,
            "ledger_bytes": self.ledger,
            "wal_bytes": self.wal,
        })
    }
}

/// `30 min`, `90 s`.
fn span(d: Duration) -> String {
    match d.as_secs() {
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// The soak's result.
pub(crate) struct Soak {
    pub(crate) duration: Duration,
    pub(crate) clients: usize,
    pub(crate) pause: Duration,
    /// Idle, before the traffic.
    pub(crate) before: Sample,
    /// During the traffic, every few seconds.
    pub(crate) samples: Vec<Sample>,
    /// Idle again: the clients gone, the upstream pool past its idle limit
    /// and used once per pipeline (see `run_soak`).
    pub(crate) after: Sample,
    pub(crate) drained_in: Duration,
    pub(crate) reasons: BTreeMap<String, u64>,
    pub(crate) sluice_metrics: Vec<(String, u64)>,
}

/// Growth from `from` to `to`, and whether it is within the slack.
struct Growth {
    what: &'static str,
    from: Option<u64>,
    to: Option<u64>,
    limit: u64,
    bytes: bool,
}

impl Growth {
    fn with_pct(
        what: &'static str,
        from: Option<u64>,
        to: Option<u64>,
        pct: f64,
        floor: u64,
    ) -> Growth {
        let limit = from.map_or(floor, |f| ((f as f64 * pct / 100.0) as u64).max(floor));
        Growth {
            what,
            from,
            to,
            limit,
            bytes: true,
        }
    }

    fn flat(&self) -> bool {
        match (self.from, self.to) {
            (Some(f), Some(t)) => t <= f + self.limit,
            _ => false,
        }
    }

    fn text(&self) -> String {
        let (Some(f), Some(t)) = (self.from, self.to) else {
            return format!("{}: not measured", self.what);
        };
        let d = t as i64 - f as i64;
        let pct = if f > 0 {
            100.0 * d as f64 / f as f64
        } else {
            0.0
        };
        let (from, to, delta, limit) = if self.bytes {
            let m = |b: f64| format!("{:.1} MiB", b / (1024.0 * 1024.0));
            (m(f as f64), m(t as f64), m(d as f64), m(self.limit as f64))
        } else {
            (
                f.to_string(),
                t.to_string(),
                d.to_string(),
                self.limit.to_string(),
            )
        };
        format!(
            "{}: {from} -> {to} ({}{delta}, {pct:+.1}%; flat up to +{limit}): {}",
            self.what,
            if d >= 0 { "+" } else { "" },
            if self.flat() { "flat" } else { "GREW" }
        )
    }
}

impl Soak {
    /// The sample that ends the warm-up (the first one past a tenth of the
    /// run) and the last one under traffic.
    fn marks(&self) -> Option<(&Sample, &Sample)> {
        let warm = self.duration / WARMUP_FRACTION;
        let w = self.samples.iter().find(|s| s.at >= warm)?;
        Some((w, self.samples.last()?))
    }

    fn growths(&self) -> Vec<Growth> {
        let Some((w, e)) = self.marks() else {
            return Vec::new();
        };
        let count = |what, from, to| Growth {
            what,
            from,
            to,
            limit: FDS_SLACK,
            bytes: false,
        };
        vec![
            Growth::with_pct(
                "sluice RSS, warm-up end -> traffic end",
                w.sluice_rss,
                e.sluice_rss,
                RSS_SLACK_PCT,
                RSS_SLACK_BYTES,
            ),
            Growth::with_pct(
                "sluice RSS, warm-up end -> drained",
                w.sluice_rss,
                self.after.sluice_rss,
                RSS_SLACK_PCT,
                RSS_SLACK_BYTES,
            ),
            Growth::with_pct(
                "sluice RssAnon, warm-up end -> traffic end",
                w.sluice_anon,
                e.sluice_anon,
                RSS_SLACK_PCT,
                RSS_SLACK_BYTES,
            ),
            count(
                "sluice fds, warm-up end -> traffic end",
                w.sluice_fds,
                e.sluice_fds,
            ),
            count(
                "sluice fds, idle before -> drained",
                self.before.sluice_fds,
                self.after.sluice_fds,
            ),
            Growth::with_pct(
                "ledger WAL, warm-up end -> traffic end",
                w.wal,
                e.wal,
                WAL_SLACK_PCT,
                WAL_SLACK_BYTES,
            ),
        ]
    }

    pub(crate) fn flat(&self) -> bool {
        let g = self.growths();
        !g.is_empty() && g.iter().all(Growth::flat)
    }

    pub(crate) fn table(&self) -> String {
        let mut head = vec!["time".to_string()];
        head.extend(TRAFFIC.iter().map(|k| k.label().to_string()));
        head.extend(
            [
                "unexp",
                "RSS MiB",
                "anon MiB",
                "peak MiB",
                "fds",
                "mocks MiB",
                "mock fds",
                "ledger MiB",
                "WAL MiB",
            ]
            .map(String::from),
        );
        // Every sample would be 180 rows for 30 minutes: about 20, plus
        // the warm-up's end and the last one.
        let step = self.samples.len().div_ceil(20).max(1);
        let warm_at = self.marks().map(|(w, _)| w.at);
        let mut rows = vec![head, self.before.cells("idle")];
        for (i, s) in self.samples.iter().enumerate() {
            let is_warm = Some(s.at) == warm_at;
            if i % step == step - 1 || is_warm || i + 1 == self.samples.len() {
                let label = if is_warm {
                    format!("{} (warm)", clock(s.at))
                } else {
                    clock(s.at)
                };
                rows.push(s.cells(&label));
            }
        }
        rows.push(self.after.cells("drained"));
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = format!(
            "== soak: {}, {} mixed clients + 1 tool lane, {} ms pause between requests ==\n\
             requests done as expected per kind (cumulative), unexpected outcomes, then Sluice's \
             RSS / RssAnon / peak RSS (VmHWM) / open descriptors, the three mocks' RSS and descriptors, the ledger and its WAL\n",
            span(self.duration),
            self.clients,
            self.pause.as_millis()
        );
        for r in &rows {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        let total = self.after.total();
        let rows_per = |b: Option<u64>| match b {
            Some(b) if total > 0 => format!("{:.0} B", b as f64 / total as f64),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{total} requests ({} unexpected) in {:.0} s; drained (pool expired, one call per pipeline) in {:.1} s; ledger {} MiB ({} per request, one row each)\n",
            self.after.unexpected,
            self.samples.last().map_or(0.0, |s| s.at.as_secs_f64()),
            self.drained_in.as_secs_f64(),
            mb(self.after.ledger),
            rows_per(self.after.ledger),
        ));
        if !self.reasons.is_empty() {
            out.push_str("unexpected outcomes:\n");
            for (r, c) in &self.reasons {
                out.push_str(&format!("  {c:>8}  {r}\n"));
            }
        }
        if !self.sluice_metrics.is_empty() {
            let m: Vec<String> = self
                .sluice_metrics
                .iter()
                .map(|(s, c)| format!("{s} {c}"))
                .collect();
            out.push_str(&format!(
                "sluice_requests_total by status: {}\n",
                m.join(", ")
            ));
        }
        for g in self.growths() {
            out.push_str(&format!("  {}\n", g.text()));
        }
        out.push_str(&format!(
            "verdict: {} (warm-up: the first {}% of the run)\n",
            if self.flat() {
                "FLAT after warm-up"
            } else {
                "NOT FLAT"
            },
            100 / WARMUP_FRACTION
        ));
        out
    }

    pub(crate) fn json(&self) -> Value {
        let (w, e) = self.marks().unzip();
        json!({
            "duration_s": self.duration.as_secs(),
            "clients": self.clients,
            "tool_lane": 1,
            "pause_ms": self.pause.as_millis() as u64,
            "requests": self.after.total(),
            "unexpected": self.after.unexpected,
            "unexpected_reasons": self.reasons,
            "idle_before": self.before.json(),
            "warmup_end": w.map(Sample::json),
            "traffic_end": e.map(Sample::json),
            "drained": self.after.json(),
            "drained_in_s": self.drained_in.as_secs_f64(),
            "flat": self.flat(),
            "samples": self.samples.iter().map(Sample::json).collect::<Vec<_>>(),
        })
    }
}
