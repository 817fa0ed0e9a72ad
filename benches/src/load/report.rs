//! Figures of a load phase, the table for people and the JSON for machines.

use std::time::Duration;

use serde_json::{Value, json};

use super::client::Outcome;

/// The figures of one phase (direct or through Sluice).
#[derive(Clone, Debug, Default)]
pub struct Phase {
    pub ok: usize,
    pub failed: usize,
    pub errors: Vec<(String, usize)>,
    pub timed_out: bool,
    pub wall_s: f64,
    pub ttfe_p50_ms: f64,
    pub ttfe_p99_ms: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub stream_p50_ms: f64,
    pub stream_p99_ms: f64,
    pub events_per_s: f64,
    pub requests_per_s: f64,
    pub peak_open: usize,
    pub peak_in_flight: usize,
    /// CPU seconds per 1000 finished requests (ok or failed), by process;
    /// `None` when the process took no part (Sluice in the direct phase).
    pub sluice_cpu_per_1k: Option<f64>,
    pub mock_cpu_per_1k: f64,
    pub client_cpu_per_1k: f64,
    /// VmHWM after the phase, bytes.
    pub sluice_peak_rss: Option<u64>,
    pub mock_peak_rss: Option<u64>,
    /// Sluice: seconds from the last stream's end until it had concluded
    /// (ledger settled, metrics counted) every request.
    pub conclude_lag_s: Option<f64>,
}

/// Nearest-rank percentile of sorted durations, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// CPU seconds each process used during a phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub sluice: Option<f64>,
    pub mock: f64,
    pub client: f64,
}

impl Phase {
    pub fn new(o: &Outcome, cpu: Cpu) -> Phase {
        let mut ttfe: Vec<Duration> = o.samples.iter().map(|s| s.ttfe).collect();
        let mut ttft: Vec<Duration> = o.samples.iter().map(|s| s.ttft).collect();
        let mut total: Vec<Duration> = o.samples.iter().map(|s| s.total).collect();
        ttfe.sort_unstable();
        ttft.sort_unstable();
        total.sort_unstable();
        let wall = o.wall.as_secs_f64().max(1e-9);
        let finished = (o.samples.len() + o.failed).max(1) as f64;
        let per_1k = |s: f64| s * 1000.0 / finished;
        Phase {
            ok: o.samples.len(),
            failed: o.failed,
            errors: o.errors.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            timed_out: o.timed_out,
            wall_s: wall,
            ttfe_p50_ms: pct(&ttfe, 50.0),
            ttfe_p99_ms: pct(&ttfe, 99.0),
            ttft_p50_ms: pct(&ttft, 50.0),
            ttft_p99_ms: pct(&ttft, 99.0),
            stream_p50_ms: pct(&total, 50.0),
            stream_p99_ms: pct(&total, 99.0),
            events_per_s: o.events as f64 / wall,
            requests_per_s: o.samples.len() as f64 / wall,
            peak_open: o.peak_open,
            peak_in_flight: o.peak_in_flight,
            sluice_cpu_per_1k: cpu.sluice.map(per_1k),
            mock_cpu_per_1k: per_1k(cpu.mock),
            client_cpu_per_1k: per_1k(cpu.client),
            sluice_peak_rss: None,
            mock_peak_rss: None,
            conclude_lag_s: None,
        }
    }

    pub fn json(&self) -> Value {
        let r = |x: f64| {
            if x.is_finite() {
                json!((x * 1000.0).round() / 1000.0)
            } else {
                Value::Null
            }
        };
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "errors": self.errors.iter().map(|(k, v)| json!({"kind": k, "count": v})).collect::<Vec<_>>(),
            "timed_out": self.timed_out,
            "wall_s": r(self.wall_s),
            "ttfe_p50_ms": r(self.ttfe_p50_ms),
            "ttfe_p99_ms": r(self.ttfe_p99_ms),
            "ttft_p50_ms": r(self.ttft_p50_ms),
            "ttft_p99_ms": r(self.ttft_p99_ms),
            "stream_p50_ms": r(self.stream_p50_ms),
            "stream_p99_ms": r(self.stream_p99_ms),
            "events_per_s": r(self.events_per_s),
            "requests_per_s": r(self.requests_per_s),
            "peak_open_streams": self.peak_open,
            "peak_in_flight": self.peak_in_flight,
            "sluice_cpu_s_per_1k": self.sluice_cpu_per_1k.map(r),
            "mock_cpu_s_per_1k": r(self.mock_cpu_per_1k),
            "client_cpu_s_per_1k": r(self.client_cpu_per_1k),
            "sluice_peak_rss_bytes": self.sluice_peak_rss,
            "mock_peak_rss_bytes": self.mock_peak_rss,
            "sluice_conclude_lag_s": self.conclude_lag_s.map(r),
        })
    }
}

/// One workload's result: both phases and their settings.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub concurrency: usize,
    pub requests: usize,
    pub tokens: usize,
    pub gap_ms: f64,
    pub direct: Phase,
    /// A plain TCP relay in front of a mock of its own (c1 only).
    pub relay: Option<Phase>,
    pub sluice: Phase,
    /// Requests Sluice counted in `sluice_requests_total`, by status.
    pub sluice_metrics: Vec<(String, u64)>,
    /// How the clients talk to Sluice (`HTTP/1.1` or `h2c`).
    pub sluice_protocol: &'static str,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

impl Workload {
    pub fn ratios(&self) -> Value {
        let (d, s) = (&self.direct, &self.sluice);
        let r = |x: f64| {
            if x.is_finite() {
                json!((x * 1000.0).round() / 1000.0)
            } else {
                Value::Null
            }
        };
        json!({
            "ttfe_p50": r(ratio(s.ttfe_p50_ms, d.ttfe_p50_ms)),
            "ttfe_p99": r(ratio(s.ttfe_p99_ms, d.ttfe_p99_ms)),
            "ttft_p50": r(ratio(s.ttft_p50_ms, d.ttft_p50_ms)),
            "ttft_p99": r(ratio(s.ttft_p99_ms, d.ttft_p99_ms)),
            "stream_p50": r(ratio(s.stream_p50_ms, d.stream_p50_ms)),
            "stream_p99": r(ratio(s.stream_p99_ms, d.stream_p99_ms)),
            "events_per_s": r(ratio(s.events_per_s, d.events_per_s)),
            "requests_per_s": r(ratio(s.requests_per_s, d.requests_per_s)),
            "sluice_cpu_over_mock_cpu": r(ratio(s.sluice_cpu_per_1k.unwrap_or(f64::NAN), s.mock_cpu_per_1k)),
            "added_ttfe_p50_ms": r(s.ttfe_p50_ms - d.ttfe_p50_ms),
            "added_ttfe_p99_ms": r(s.ttfe_p99_ms - d.ttfe_p99_ms),
            "added_ttft_p50_ms": r(s.ttft_p50_ms - d.ttft_p50_ms),
            "added_ttft_p99_ms": r(s.ttft_p99_ms - d.ttft_p99_ms),
        })
    }

    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": self.requests,
            "tokens": self.tokens,
            "gap_ms": self.gap_ms,
            "direct": self.direct.json(),
            "relay": self.relay.as_ref().map(Phase::json),
            "sluice": self.sluice.json(),
            "ratios": self.ratios(),
            "sluice_protocol": self.sluice_protocol,
            "sluice_requests_total": self.sluice_metrics.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// The human table of this workload.
    pub fn table(&self) -> String {
        let (d, s) = (&self.direct, &self.sluice);
        let mut out = format!(
            "== {}: {} concurrent clients, {} requests, {} tokens per stream, {} ms between events ==\n",
            self.name, self.concurrency, self.requests, self.tokens, self.gap_ms
        );
        out += &format!(
            "{:<32} {:>20} {:>20} {:>18}\n",
            "",
            "direct",
            format!("Sluice ({})", self.sluice_protocol),
            "Sluice/direct"
        );
        let mut row = |label: &str, a: String, b: String, r: String| {
            out += &format!("{label:<32} {a:>20} {b:>20} {r:>18}\n");
        };
        let pair = |x: f64, y: f64| format!("{} / {}", f3(x), f3(y));
        let rpair = |a: (f64, f64), b: (f64, f64)| {
            format!("{} / {}", fx(ratio(b.0, a.0)), fx(ratio(b.1, a.1)))
        };
        row(
            "requests ok / failed",
            format!("{} / {}", d.ok, d.failed),
            format!("{} / {}", s.ok, s.failed),
            String::new(),
        );
        row(
            "first event p50 / p99 (ms)",
            pair(d.ttfe_p50_ms, d.ttfe_p99_ms),
            pair(s.ttfe_p50_ms, s.ttfe_p99_ms),
            rpair(
                (d.ttfe_p50_ms, d.ttfe_p99_ms),
                (s.ttfe_p50_ms, s.ttfe_p99_ms),
            ),
        );
        row(
            "first token p50 / p99 (ms)",
            pair(d.ttft_p50_ms, d.ttft_p99_ms),
            pair(s.ttft_p50_ms, s.ttft_p99_ms),
            rpair(
                (d.ttft_p50_ms, d.ttft_p99_ms),
                (s.ttft_p50_ms, s.ttft_p99_ms),
            ),
        );
        row(
            "whole stream p50 / p99 (ms)",
            pair(d.stream_p50_ms, d.stream_p99_ms),
            pair(s.stream_p50_ms, s.stream_p99_ms),
            rpair(
                (d.stream_p50_ms, d.stream_p99_ms),
                (s.stream_p50_ms, s.stream_p99_ms),
            ),
        );
        row(
            "events/s",
            format!("{:.0}", d.events_per_s),
            format!("{:.0}", s.events_per_s),
            fx(ratio(s.events_per_s, d.events_per_s)),
        );
        row(
            "requests/s",
            format!("{:.1}", d.requests_per_s),
            format!("{:.1}", s.requests_per_s),
            fx(ratio(s.requests_per_s, d.requests_per_s)),
        );
        row(
            "Sluice CPU s / 1000 requests",
            "-".into(),
            f3(s.sluice_cpu_per_1k.unwrap_or(f64::NAN)),
            format!(
                "{} of mock",
                fx(ratio(
                    s.sluice_cpu_per_1k.unwrap_or(f64::NAN),
                    s.mock_cpu_per_1k
                ))
            ),
        );
        row(
            "mock CPU s / 1000 requests",
            f3(d.mock_cpu_per_1k),
            f3(s.mock_cpu_per_1k),
            String::new(),
        );
        row(
            "client CPU s / 1000 requests",
            f3(d.client_cpu_per_1k),
            f3(s.client_cpu_per_1k),
            String::new(),
        );
        row(
            "peak RSS Sluice / mock (MB)",
            format!("- / {}", mb(d.mock_peak_rss)),
            format!("{} / {}", mb(s.sluice_peak_rss), mb(s.mock_peak_rss)),
            String::new(),
        );
        row(
            "Sluice done concluding after (s)",
            "-".into(),
            s.conclude_lag_s.map_or("-".into(), f3),
            String::new(),
        );
        row(
            "peak requests in flight / open",
            format!("{} / {}", d.peak_in_flight, d.peak_open),
            format!("{} / {}", s.peak_in_flight, s.peak_open),
            String::new(),
        );
        if let Some(r) = &self.relay {
            out += &format!(
                "plain TCP relay (one more hop, nothing parsed): first token p50 / p99 {} / {} ms, \
                 {:+.3} / {:+.3} ms over direct\n",
                f3(r.ttft_p50_ms),
                f3(r.ttft_p99_ms),
                r.ttft_p50_ms - d.ttft_p50_ms,
                r.ttft_p99_ms - d.ttft_p99_ms
            );
        }
        for (name, p) in [("direct", d), ("Sluice", s)] {
            if !p.errors.is_empty() {
                let list: Vec<String> = p.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out += &format!("  {name} failures: {}\n", list.join(", "));
            }
            if p.timed_out {
                out += &format!("  {name}: the phase hit its deadline\n");
            }
        }
        if !self.sluice_metrics.is_empty() {
            let list: Vec<String> = self
                .sluice_metrics
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out += &format!(
                "  sluice_requests_total (warm-up included): {}\n",
                list.join(", ")
            );
        }
        out
    }
}

pub fn f3(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub fn fx(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "-".into()
    }
}

pub fn mb(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    })
}

/// Latencies of the upstream close after a deadline or a client disconnect.
#[derive(Clone, Debug, Default)]
pub struct Close {
    pub samples_ms: Vec<f64>,
    /// Requests whose upstream the mock never saw closed.
    pub not_closed: usize,
    pub failed: Vec<String>,
}

impl Close {
    pub fn pct(&self, p: f64) -> f64 {
        let mut v = self.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn max(&self) -> f64 {
        self.samples_ms.iter().copied().fold(f64::NAN, f64::max)
    }

    pub fn json(&self) -> Value {
        let r = |x: f64| {
            if x.is_finite() {
                json!((x * 1000.0).round() / 1000.0)
            } else {
                Value::Null
            }
        };
        json!({
            "samples": self.samples_ms.len(),
            "not_closed": self.not_closed,
            "failed": self.failed.len(),
            "p50_ms": r(self.pct(50.0)),
            "p99_ms": r(self.pct(99.0)),
            "max_ms": r(self.max()),
        })
    }
}
