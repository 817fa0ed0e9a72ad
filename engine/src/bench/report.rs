//! The report of a run: a versioned JSON document (`--json FILE`, read
//! back by `sluice bench compare`) and the table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The `schema` of reports this version writes and reads.
pub const SCHEMA: &str = "sluice-bench/1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub sluice_version: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub config: RunConfig,
    /// One per concurrency or rate of the sweep, in order.
    pub steps: Vec<StepReport>,
    /// `--via`: the same steps through each gateway, run in rounds that
    /// alternate with those of `steps` (the direct endpoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<Via>,
}

/// The gateway's side of a `--via` run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Via {
    /// `--via NAME=URL`'s name; `via` (or `via 1`, `via 2`, …) without.
    pub name: String,
    pub url: String,
    pub api: String,
    pub model: String,
    /// Rounds per side and step; each took its share of the requests or
    /// the duration.
    pub rounds: u32,
    pub steps: Vec<StepReport>,
    /// Step by step, what the gateway added.
    pub added: Vec<Added>,
}

/// What a gateway adds to one step (`--via`): the gateway's figure minus
/// the direct endpoint's, in milliseconds, and the gateway's throughput
/// over the direct one's.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Added {
    pub load: StepLoad,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
    pub request_throughput_ratio: Option<f64>,
    pub output_throughput_ratio: Option<f64>,
}

impl Added {
    pub fn between(direct: &StepReport, via: &StepReport) -> Added {
        let diff = |get: fn(&StepReport) -> Option<f64>| Some(get(via)? - get(direct)?);
        let ratio = |a: f64, b: f64| (a > 0.0).then(|| b / a);
        Added {
            load: via.load.clone(),
            ttft_p50_ms: diff(|s| s.ttft_ms.map(|x| x.p50)),
            ttft_p99_ms: diff(|s| s.ttft_ms.map(|x| x.p99)),
            itl_p50_ms: diff(|s| s.itl_ms.map(|x| x.p50)),
            itl_p99_ms: diff(|s| s.itl_ms.map(|x| x.p99)),
            e2e_p50_ms: diff(|s| s.e2e_ms.map(|x| x.p50)),
            e2e_p99_ms: diff(|s| s.e2e_ms.map(|x| x.p99)),
            request_throughput_ratio: ratio(direct.request_throughput, via.request_throughput),
            output_throughput_ratio: ratio(direct.output_throughput, via.output_throughput),
        }
    }
}

/// How the run was set up (no header values, no key, no URL query).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub url: String,
    /// `chat` (OpenAI Chat Completions) or `messages` (Anthropic).
    pub api: String,
    pub model: String,
    pub stream: bool,
    /// `concurrency` (closed loop) or `rate` (open loop, requests/s).
    pub load: String,
    pub values: Vec<f64>,
    pub arrivals: Option<String>,
    pub requests: Option<u64>,
    pub duration_s: Option<f64>,
    pub warmup_requests: Option<u64>,
    pub warmup_s: Option<f64>,
    /// The length distribution of synthetic prompts, in o200k tokens.
    pub prompt_tokens: Option<String>,
    pub prompts_file: Option<String>,
    pub output_tokens: String,
    pub slo: Option<String>,
    pub seed: u64,
    pub timeout_s: f64,
    pub max_in_flight: usize,
    /// A closed loop's clients started over this time (`--ramp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_s: Option<f64>,
    /// h2c instead of HTTP/1.1 (`--http2`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
}

/// One step's load: `concurrency` 8, or `rate` 2.5 (requests/s).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepLoad {
    pub kind: String,
    pub value: f64,
}

/// Percentiles from an HDR histogram (3 significant digits); count, mean,
/// min and max exact.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// How many successful requests had their output tokens counted by the
/// server's usage and how many by Sluice's o200k tokenizer (no usage).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TokenCounts {
    pub server: u64,
    #[serde(rename = "client:o200k")]
    pub client_o200k: u64,
}

/// The client's own CPU over the step (getrusage of the process).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuReport {
    pub user_s: f64,
    pub system_s: f64,
    /// CPU seconds per second of real time: 1.0 is one core busy.
    pub cores_busy: f64,
    pub cores_available: u32,
    /// Above 80% of the available cores: the client may be the bottleneck.
    pub saturated: bool,
}

/// One second of the step, counted from its start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Second {
    pub t: u32,
    /// Requests that ended in this second.
    pub ok: u64,
    pub failed: u64,
    /// Output tokens whose chunks arrived in this second.
    pub output_tokens: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StepReport {
    pub load: StepLoad,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failed requests by cause.
    pub failures: BTreeMap<String, u64>,
    /// The first message seen for each cause.
    pub failure_examples: BTreeMap<String, String>,
    /// From the step's start to the end of its last request.
    pub duration_s: f64,
    /// Successful requests per second.
    pub request_throughput: f64,
    /// Output tokens of successful requests per second.
    pub output_throughput: f64,
    /// Requests within every SLO per second (with `--slo`).
    pub goodput: Option<f64>,
    pub good: Option<u64>,
    pub output_tokens: u64,
    /// As reported by the server (0 when it reports none).
    pub prompt_tokens: u64,
    pub tokens_counted_by: TokenCounts,
    pub ttft_ms: Option<Stats>,
    pub itl_ms: Option<Stats>,
    pub tpot_ms: Option<Stats>,
    pub e2e_ms: Option<Stats>,
    pub send_lag_ms: Option<Stats>,
    pub output_tokens_per_s_per_request: Option<Stats>,
    /// TTFT's distribution: [percentile, ms] at 0, 5, 10, …, 95, 99,
    /// 99.9 and 100 (for `--html`'s plots).
    #[serde(default)]
    pub ttft_distribution_ms: Vec<[f64; 2]>,
    /// ITL's distribution, at the same percentiles.
    #[serde(default)]
    pub itl_distribution_ms: Vec<[f64; 2]>,
    pub peak_in_flight: u64,
    pub client_cpu: Option<CpuReport>,
    pub series: Vec<Second>,
    /// The run was interrupted (Ctrl-C) during this step: its figures are
    /// those of the requests that ended before; the ones in flight then
    /// (`sent` - `ok` - `failed`) were abandoned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl StepReport {
    /// `concurrency 8` or `rate 2.5/s`.
    pub fn label(&self) -> String {
        match self.load.kind.as_str() {
            "rate" => format!("rate {}/s", num(self.load.value)),
            kind => format!("{kind} {}", num(self.load.value)),
        }
    }

    /// How the output tokens were counted, in words.
    pub fn counted_by(&self) -> &'static str {
        match (
            self.tokens_counted_by.server,
            self.tokens_counted_by.client_o200k,
        ) {
            (_, 0) => "server usage",
            (0, _) => "client (o200k; the server reported no usage)",
            _ => "server usage, client o200k where none came",
        }
    }
}

/// A number without needless decimals.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The table printed at the end of a run.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.config;
    let _ = writeln!(
        out,
        "sluice bench {} ({}, model {}, {})",
        c.url,
        c.api,
        c.model,
        if c.stream {
            "streaming"
        } else {
            "not streaming"
        }
    );
    for step in &report.steps {
        out.push('\n');
        render_step(&mut out, step);
    }
    if report.steps.len() > 1 {
        out.push('\n');
        render_sweep(&mut out, &report.steps);
    }
    for via in &report.via {
        let _ = writeln!(
            out,
            "\n{}: through {} ({}, model {}), {} rounds alternating with the direct ones",
            via.name, via.url, via.api, via.model, via.rounds
        );
        for step in &via.steps {
            out.push('\n');
            render_step(&mut out, step);
        }
        out.push('\n');
        render_added(&mut out, &via.name, &via.added);
    }
    out
}

/// What the gateway added, one line per step.
fn render_added(out: &mut String, name: &str, added: &[Added]) {
    let _ = writeln!(
        out,
        "added by {name} (its figure minus the direct one's; throughput: its over the direct one's)"
    );
    let _ = writeln!(
        out,
        "  {:<18}{:>21}{:>21}{:>21}{:>11}{:>11}",
        "step", "TTFT p50/p99", "ITL p50/p99", "E2E p50/p99", "req/s", "tok/s"
    );
    let d = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:+.2}"));
    let r = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}x"));
    for a in added {
        let label = StepReport {
            load: a.load.clone(),
            ..StepReport::default()
        }
        .label();
        let _ = writeln!(
            out,
            "  {:<18}{:>21}{:>21}{:>21}{:>11}{:>11}",
            label,
            format!("{}/{}", d(a.ttft_p50_ms), d(a.ttft_p99_ms)),
            format!("{}/{}", d(a.itl_p50_ms), d(a.itl_p99_ms)),
            format!("{}/{}", d(a.e2e_p50_ms), d(a.e2e_p99_ms)),
            r(a.request_throughput_ratio),
            r(a.output_throughput_ratio),
        );
    }
    let _ = writeln!(out, "  (milliseconds)");
}

fn render_step(out: &mut String, s: &StepReport) {
    let mut failures = String::new();
    if s.failed > 0 {
        let causes: Vec<String> = s
            .failures
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        failures = format!(" ({})", causes.join(", "));
    }
    let interrupted = if s.interrupted {
        format!(
            " (interrupted: {} in flight abandoned)",
            s.sent.saturating_sub(s.ok + s.failed)
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "{}: {} sent, {} ok, {} failed{failures} in {:.2} s{interrupted}",
        s.label(),
        s.sent,
        s.ok,
        s.failed,
        s.duration_s
    );
    let _ = writeln!(
        out,
        "  {:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "", "mean", "min", "p50", "p90", "p99", "max"
    );
    for (name, stats) in [
        ("TTFT ms", &s.ttft_ms),
        ("ITL ms (chunk gaps)", &s.itl_ms),
        ("TPOT ms", &s.tpot_ms),
        ("E2E ms", &s.e2e_ms),
        ("send lag ms", &s.send_lag_ms),
        ("output tok/s per req", &s.output_tokens_per_s_per_request),
    ] {
        if let Some(st) = stats {
            let _ = writeln!(
                out,
                "  {name:<22}{:>9}{:>9}{:>9}{:>9}{:>9}{:>9}",
                ms(st.mean),
                ms(st.min),
                ms(st.p50),
                ms(st.p90),
                ms(st.p99),
                ms(st.max)
            );
        }
    }
    let _ = write!(
        out,
        "  {:.2} requests/s, {:.1} output tokens/s ({} tokens, counted by {})",
        s.request_throughput,
        s.output_throughput,
        s.output_tokens,
        s.counted_by()
    );
    if let Some(g) = s.goodput {
        let _ = write!(out, ", goodput {g:.2} requests/s");
    }
    out.push('\n');
    if let Some(cpu) = s.client_cpu {
        let _ = writeln!(
            out,
            "  client CPU {:.0}% of a core ({} available){}",
            cpu.cores_busy * 100.0,
            cpu.cores_available,
            if cpu.saturated {
                ": SATURATED, the client may be what limits these figures"
            } else {
                ""
            }
        );
    }
    for (cause, msg) in &s.failure_examples {
        let _ = writeln!(out, "  {cause}: {msg}");
    }
}

fn render_sweep(out: &mut String, steps: &[StepReport]) {
    let _ = writeln!(
        out,
        "{:<18}{:>8}{:>8}{:>10}{:>11}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "step",
        "ok",
        "failed",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "E2E p99"
    );
    let p = |s: &Option<Stats>, f: fn(&Stats) -> f64| s.as_ref().map_or("-".into(), |s| ms(f(s)));
    for s in steps {
        let _ = writeln!(
            out,
            "{:<18}{:>8}{:>8}{:>10.2}{:>11.1}{:>10}{:>10}{:>10}{:>10}{:>10}",
            s.label(),
            s.ok,
            s.failed,
            s.request_throughput,
            s.output_throughput,
            p(&s.ttft_ms, |s| s.p50),
            p(&s.ttft_ms, |s| s.p99),
            p(&s.itl_ms, |s| s.p50),
            p(&s.tpot_ms, |s| s.p50),
            p(&s.e2e_ms, |s| s.p99),
        );
    }
}

/// Reads a report written by `--json`, refusing other schemas.
pub fn read(path: &std::path::Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    match v.get("schema").and_then(|s| s.as_str()) {
        Some(SCHEMA) => {}
        Some(other) => {
            return Err(format!(
                "{}: schema \"{other}\" is not \"{SCHEMA}\"",
                path.display()
            ));
        }
        None => {
            return Err(format!(
                "{}: not a sluice bench report (no \"schema\")",
                path.display()
            ));
        }
    }
    serde_json::from_value(v).map_err(|e| format!("{}: {e}", path.display()))
}
