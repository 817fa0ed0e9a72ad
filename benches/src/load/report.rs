//! Figures of a load phase, the table for people and the JSON for machines.

use serde_json::{Value, json};
use sluice::bench::report::{Stats, StepReport};

/// The figures of one path (direct, through the relay, through Sluice),
/// from `sluice bench`'s report of it and the CPU of its processes.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    pub ok: u64,
    pub failed: u64,
    /// Failed requests by cause (`sluice bench`'s causes).
    pub errors: Vec<(String, u64)>,
    pub wall_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
    /// End to end: from sending the request to the stream's end marker.
    pub stream_p50_ms: f64,
    pub stream_p99_ms: f64,
    /// Output tokens (as the server reported them) per second.
    pub tokens_per_s: f64,
    pub requests_per_s: f64,
    pub peak_in_flight: u64,
    /// CPU seconds per 1000 finished requests (ok or failed), by process;
    /// the hop is Sluice or the relay (`None` on the direct path).
    pub hop_cpu_per_1k: Option<f64>,
    pub mock_cpu_per_1k: f64,
    pub client_cpu_per_1k: f64,
    /// VmHWM after the phase, bytes.
    pub hop_peak_rss: Option<u64>,
    pub mock_peak_rss: Option<u64>,
    /// Sluice: seconds from the last stream's end until it had concluded
    /// (ledger settled, metrics counted) every request.
    pub conclude_lag_s: Option<f64>,
}

/// CPU seconds the path's processes used during its measured part.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub hop: Option<f64>,
    pub mock: f64,
}

fn at(s: &Option<Stats>, p: fn(&Stats) -> f64) -> f64 {
    s.as_ref().map_or(f64::NAN, p)
}

impl Phase {
    pub fn new(s: &StepReport, cpu: Cpu) -> Phase {
        let finished = (s.ok + s.failed).max(1) as f64;
        let per_1k = |x: f64| x * 1000.0 / finished;
        let client = s
            .client_cpu
            .as_ref()
            .map_or(f64::NAN, |c| c.user_s + c.system_s);
        Phase {
            ok: s.ok,
            failed: s.failed,
            errors: s.failures.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            wall_s: s.duration_s,
            ttft_p50_ms: at(&s.ttft_ms, |x| x.p50),
            ttft_p99_ms: at(&s.ttft_ms, |x| x.p99),
            itl_p50_ms: at(&s.itl_ms, |x| x.p50),
            itl_p99_ms: at(&s.itl_ms, |x| x.p99),
            stream_p50_ms: at(&s.e2e_ms, |x| x.p50),
            stream_p99_ms: at(&s.e2e_ms, |x| x.p99),
            tokens_per_s: s.output_throughput,
            requests_per_s: s.request_throughput,
            peak_in_flight: s.peak_in_flight,
            hop_cpu_per_1k: cpu.hop.map(per_1k),
            mock_cpu_per_1k: per_1k(cpu.mock),
            client_cpu_per_1k: per_1k(client),
            hop_peak_rss: None,
            mock_peak_rss: None,
            conclude_lag_s: None,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "ok": self.ok,
            "failed": self.failed,
            "errors": self.errors.iter().map(|(k, v)| json!({"kind": k, "count": v})).collect::<Vec<_>>(),
            "wall_s": r3(self.wall_s),
            "ttft_p50_ms": r3(self.ttft_p50_ms),
            "ttft_p99_ms": r3(self.ttft_p99_ms),
            "itl_p50_ms": r3(self.itl_p50_ms),
            "itl_p99_ms": r3(self.itl_p99_ms),
            "stream_p50_ms": r3(self.stream_p50_ms),
            "stream_p99_ms": r3(self.stream_p99_ms),
            "tokens_per_s": r3(self.tokens_per_s),
            "requests_per_s": r3(self.requests_per_s),
            "peak_in_flight": self.peak_in_flight,
            "hop_cpu_s_per_1k": self.hop_cpu_per_1k.map(r3),
            "mock_cpu_s_per_1k": r3(self.mock_cpu_per_1k),
            "client_cpu_s_per_1k": r3(self.client_cpu_per_1k),
            "hop_peak_rss_bytes": self.hop_peak_rss,
            "mock_peak_rss_bytes": self.mock_peak_rss,
            "sluice_conclude_lag_s": self.conclude_lag_s.map(r3),
        })
    }
}

/// Rounded to 3 decimals; `null` when not a number.
fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// One workload's result: every path and its settings.
#[derive(Clone, Debug)]
pub struct Workload {
    pub name: String,
    pub concurrency: usize,
    pub requests: usize,
    pub tokens: usize,
    pub gap_ms: f64,
    pub direct: Phase,
    /// A plain TCP relay in front of a mock of its own.
    pub relay: Option<Phase>,
    pub sluice: Phase,
    /// Requests Sluice counted in `sluice_requests_total`, by status.
    pub sluice_metrics: Vec<(String, u64)>,
    /// How the clients talk to Sluice (`HTTP/1.1` or `h2c`).
    pub sluice_protocol: &'static str,
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

impl Workload {
    pub fn ratios(&self) -> Value {
        let (d, s) = (&self.direct, &self.sluice);
        let sluice_cpu = s.hop_cpu_per_1k.unwrap_or(f64::NAN);
        let relay = self.relay.as_ref();
        json!({
            "ttft_p50": r3(ratio(s.ttft_p50_ms, d.ttft_p50_ms)),
            "ttft_p99": r3(ratio(s.ttft_p99_ms, d.ttft_p99_ms)),
            "stream_p50": r3(ratio(s.stream_p50_ms, d.stream_p50_ms)),
            "stream_p99": r3(ratio(s.stream_p99_ms, d.stream_p99_ms)),
            "tokens_per_s": r3(ratio(s.tokens_per_s, d.tokens_per_s)),
            "requests_per_s": r3(ratio(s.requests_per_s, d.requests_per_s)),
            "sluice_cpu_over_mock_cpu": r3(ratio(sluice_cpu, s.mock_cpu_per_1k)),
            "sluice_cpu_over_relay_cpu": relay.map(|r| r3(ratio(sluice_cpu, r.hop_cpu_per_1k.unwrap_or(f64::NAN)))),
            "added_ttft_p50_ms": r3(s.ttft_p50_ms - d.ttft_p50_ms),
            "added_ttft_p99_ms": r3(s.ttft_p99_ms - d.ttft_p99_ms),
            "relay_added_ttft_p50_ms": relay.map(|r| r3(r.ttft_p50_ms - d.ttft_p50_ms)),
            "relay_added_ttft_p99_ms": relay.map(|r| r3(r.ttft_p99_ms - d.ttft_p99_ms)),
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

    /// The paths measured, in the table's order (no direct one under
    /// `--skip-direct`).
    pub fn paths(&self) -> Vec<(&'static str, &Phase)> {
        let mut paths = Vec::new();
        if self.direct.ok + self.direct.failed > 0 {
            paths.push(("direct", &self.direct));
        }
        if let Some(r) = &self.relay {
            paths.push(("TCP relay", r));
        }
        paths.push(("Sluice", &self.sluice));
        paths
    }

    /// The human table of this workload: one column per path, then
    /// Sluice's over direct.
    pub fn table(&self) -> String {
        let (d, s) = (&self.direct, &self.sluice);
        let paths = self.paths();
        let mut out = format!(
            "== {}: {} concurrent clients, {} requests, {} tokens per stream, {} ms between events ==\n",
            self.name, self.concurrency, self.requests, self.tokens, self.gap_ms
        );
        out += &format!("{:<32}", "");
        for (name, _) in &paths {
            let name = match *name {
                "Sluice" => format!("Sluice ({})", self.sluice_protocol),
                n => n.to_string(),
            };
            out += &format!(" {name:>20}");
        }
        out += &format!(" {:>18}\n", "Sluice/direct");
        let mut row = |label: &str, cell: &dyn Fn(&Phase) -> String, r: String| {
            out += &format!("{label:<32}");
            for (_, p) in &paths {
                out += &format!(" {:>20}", cell(p));
            }
            out += &format!(" {r:>18}\n");
        };
        let pair = |x: f64, y: f64| format!("{} / {}", f3(x), f3(y));
        let rpair = |a: (f64, f64), b: (f64, f64)| {
            format!("{} / {}", fx(ratio(b.0, a.0)), fx(ratio(b.1, a.1)))
        };
        row(
            "requests ok / failed",
            &|p| format!("{} / {}", p.ok, p.failed),
            String::new(),
        );
        row(
            "first token p50 / p99 (ms)",
            &|p| pair(p.ttft_p50_ms, p.ttft_p99_ms),
            rpair(
                (d.ttft_p50_ms, d.ttft_p99_ms),
                (s.ttft_p50_ms, s.ttft_p99_ms),
            ),
        );
        row(
            "inter-token p50 / p99 (ms)",
            &|p| pair(p.itl_p50_ms, p.itl_p99_ms),
            String::new(),
        );
        row(
            "whole stream p50 / p99 (ms)",
            &|p| pair(p.stream_p50_ms, p.stream_p99_ms),
            rpair(
                (d.stream_p50_ms, d.stream_p99_ms),
                (s.stream_p50_ms, s.stream_p99_ms),
            ),
        );
        row(
            "output tokens/s",
            &|p| format!("{:.0}", p.tokens_per_s),
            fx(ratio(s.tokens_per_s, d.tokens_per_s)),
        );
        row(
            "requests/s",
            &|p| format!("{:.1}", p.requests_per_s),
            fx(ratio(s.requests_per_s, d.requests_per_s)),
        );
        row(
            "hop CPU s / 1000 requests",
            &|p| p.hop_cpu_per_1k.map_or("-".into(), f3),
            format!(
                "{} of mock",
                fx(ratio(
                    s.hop_cpu_per_1k.unwrap_or(f64::NAN),
                    s.mock_cpu_per_1k
                ))
            ),
        );
        row(
            "mock CPU s / 1000 requests",
            &|p| f3(p.mock_cpu_per_1k),
            String::new(),
        );
        row(
            "client CPU s / 1000 requests",
            &|p| f3(p.client_cpu_per_1k),
            String::new(),
        );
        row(
            "peak RSS hop / mock (MB)",
            &|p| format!("{} / {}", mb(p.hop_peak_rss), mb(p.mock_peak_rss)),
            String::new(),
        );
        row(
            "Sluice done concluding after (s)",
            &|p| p.conclude_lag_s.map_or("-".into(), f3),
            String::new(),
        );
        row(
            "peak requests in flight",
            &|p| p.peak_in_flight.to_string(),
            String::new(),
        );
        for (name, p) in &paths {
            if !p.errors.is_empty() {
                let list: Vec<String> = p.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                out += &format!("  {name} failures: {}\n", list.join(", "));
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
