//! The figures: what one request measured ([`Answer`] or [`Failure`]),
//! their aggregation over a step ([`Tally`]: HDR histograms, counts by
//! failure cause, a per-second series, goodput against SLOs), and the
//! client's own CPU time.
//!
//! Definitions (docs/bench.md says where they differ from vLLM's and
//! genai-perf's):
//! - every latency counts from the request's *intended* send time: the
//!   moment it was sent in a closed loop, its scheduled time in an open
//!   loop (so that a server falling behind shows in the latencies, not in
//!   fewer requests sent); the send lag (actual - intended) is reported too;
//! - TTFT: until the first chunk that carries generated content (text,
//!   reasoning, refusal or tool-call pieces; empty deltas do not count);
//! - ITL: the gaps between successive content chunks, every gap of every
//!   request one sample (vLLM's ITL);
//! - TPOT: per request (E2E - TTFT) / (output tokens - 1), for answers of
//!   two tokens or more (vLLM's TPOT, genai-perf's "inter-token latency");
//! - E2E: until the stream's end marker (`[DONE]`, `message_stop`), or the
//!   last byte of a non-streamed answer;
//! - output tokens per second of a request: its output tokens / its E2E;
//! - throughput: the step's output tokens (or requests) / its duration,
//!   from its start to the end of its last request;
//! - goodput: requests that succeeded within every SLO / the duration.
//!
//! Only successful requests feed the latency and token figures; failed
//! ones are counted by cause.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::report::{CpuReport, Second, Stats, StepReport, TokenCounts};

/// Who counted a request's output tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CountedBy {
    /// The server's usage report.
    Server,
    /// Sluice's o200k tokenizer over the streamed text (no usage came).
    Client,
}

/// A request that succeeded.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// Intended send -> first content chunk; `None` without streaming.
    pub ttft: Option<Duration>,
    /// Intended send -> end of the answer.
    pub e2e: Duration,
    /// Gaps between successive content chunks.
    pub itl: Vec<Duration>,
    pub output_tokens: u64,
    pub counted_by: CountedBy,
    /// As the server reported it, if it did.
    pub prompt_tokens: Option<u64>,
    /// Content chunks per second of the step (run-length: second, chunks),
    /// to spread the output tokens over the throughput series.
    pub chunk_seconds: Vec<(u32, u32)>,
}

impl Answer {
    /// (E2E - TTFT) / (output tokens - 1), for two tokens or more.
    pub fn tpot(&self) -> Option<Duration> {
        let ttft = self.ttft?;
        if self.output_tokens < 2 {
            return None;
        }
        let span = self.e2e.saturating_sub(ttft);
        Some(Duration::from_nanos(
            (span.as_nanos() / u128::from(self.output_tokens - 1)) as u64,
        ))
    }

    /// Output tokens / E2E.
    pub fn tokens_per_second(&self) -> Option<f64> {
        let secs = self.e2e.as_secs_f64();
        (secs > 0.0).then(|| self.output_tokens as f64 / secs)
    }
}

/// Why a request failed: a short cause that reports group by, and the
/// first message seen for it (already scrubbed of secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `connect`, `http_503`, `timeout`, `stream_error`, `incomplete`,
    /// `connection`, `protocol`, `no_content`, `config`.
    pub cause: String,
    pub message: String,
}

/// One request's fate, with when it was meant to go and when it went.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub scheduled: Instant,
    pub sent: Instant,
    pub ended: Instant,
    pub result: Result<Answer, Failure>,
}

/// Service-level objectives for goodput (`--slo ttft=200ms,tpot=50ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slo {
    pub ttft: Option<Duration>,
    pub tpot: Option<Duration>,
    pub e2e: Option<Duration>,
}

impl Slo {
    /// `ttft=200ms,tpot=50ms,e2e=2s` (any of them).
    pub fn parse(s: &str) -> Result<Slo, String> {
        let mut slo = Slo::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("invalid SLO \"{part}\", expected NAME=DURATION"))?;
            let d = humantime::parse_duration(value.trim()).map_err(|_| {
                format!("invalid SLO \"{part}\", expected a duration such as 200ms")
            })?;
            let slot = match name.trim() {
                "ttft" => &mut slo.ttft,
                "tpot" => &mut slo.tpot,
                "e2e" | "e2el" => &mut slo.e2e,
                other => {
                    return Err(format!(
                        "unknown SLO \"{other}\", expected ttft, tpot or e2e"
                    ));
                }
            };
            *slot = Some(d);
        }
        Ok(slo)
    }

    pub fn is_empty(&self) -> bool {
        *self == Slo::default()
    }

    /// Whether `a` is within every objective. As in vLLM, an answer of
    /// one token has a TPOT of zero; without streaming its TTFT is its E2E.
    pub fn met_by(&self, a: &Answer) -> bool {
        let ttft = a.ttft.unwrap_or(a.e2e);
        let tpot = a.tpot().unwrap_or(Duration::ZERO);
        self.ttft.is_none_or(|l| ttft <= l)
            && self.tpot.is_none_or(|l| tpot <= l)
            && self.e2e.is_none_or(|l| a.e2e <= l)
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [("ttft", self.ttft), ("tpot", self.tpot), ("e2e", self.e2e)] {
            if let Some(v) = v {
                parts.push(format!("{name}<={}", humantime::format_duration(v)));
            }
        }
        parts.join(",")
    }
}

/// Highest value a histogram takes: one hour, in microseconds (or 10^11
/// hundredths of a token per second).
const HIST_HIGH: u64 = 100_000_000_000;

/// An HDR histogram (3 significant digits) with the exact count, sum,
/// minimum and maximum beside it, so that means and extremes are exact
/// and every percentile lies within 0.1% of its exact value (clamped to
/// the exact extremes).
#[derive(Clone, Debug)]
pub struct Hist {
    h: Histogram<u64>,
    n: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            // Bounds and precision are constants that the crate accepts.
            h: Histogram::new_with_bounds(1, HIST_HIGH, 3).unwrap_or_else(|_| unreachable!()),
            n: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl Hist {
    pub fn record(&mut self, v: u64) {
        let v = v.min(HIST_HIGH);
        self.h.saturating_record(v);
        self.n += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_micros().min(u128::from(u64::MAX)) as u64);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Adds `other`'s samples (the same bounds and precision: `add` cannot
    /// fail).
    pub fn absorb(&mut self, other: &Hist) {
        let _ = self.h.add(&other.h);
        self.n += other.n;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The percentile `q` (0..=100), in recorded units.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        self.h
            .value_at_quantile(q / 100.0)
            .clamp(self.min, self.max)
    }

    /// [percentile, value / `scale`] at 0, 5, …, 95, 99, 99.9 and 100;
    /// empty without samples.
    pub fn distribution(&self, scale: f64) -> Vec<[f64; 2]> {
        if self.n == 0 {
            return Vec::new();
        }
        (0..20)
            .map(|i| f64::from(i) * 5.0)
            .chain([99.0, 99.9, 100.0])
            .map(|q| [q, self.percentile(q) as f64 / scale])
            .collect()
    }

    /// The figures, each recorded unit divided by `scale` (1000 turns
    /// microseconds into milliseconds).
    pub fn stats(&self, scale: f64) -> Option<Stats> {
        if self.n == 0 {
            return None;
        }
        let f = |v: u64| v as f64 / scale;
        Some(Stats {
            count: self.n,
            mean: self.sum as f64 / self.n as f64 / scale,
            min: f(self.min),
            p50: f(self.percentile(50.0)),
            p90: f(self.percentile(90.0)),
            p99: f(self.percentile(99.0)),
            max: f(self.max),
        })
    }
}

/// Everything a step measured, built up as requests end.
#[derive(Debug)]
pub struct Tally {
    /// The step's start: the first request's intended send time.
    pub epoch: Instant,
    slo: Slo,
    pub ttft: Hist,
    pub itl: Hist,
    pub tpot: Hist,
    pub e2e: Hist,
    pub lag: Hist,
    /// Hundredths of a token per second.
    pub tps: Hist,
    pub ok: u64,
    pub failed: u64,
    pub good: u64,
    failures: BTreeMap<String, (u64, String)>,
    pub output_tokens: u64,
    prompt_tokens: u64,
    counted_server: u64,
    counted_client: u64,
    last_end: Option<Instant>,
    series: Vec<Second>,
    /// The durations of the rounds absorbed (`--via`'s alternating rounds).
    absorbed: Duration,
}

/// Seconds of series a step keeps at most (a day).
const MAX_SERIES: usize = 86_400;

impl Tally {
    pub fn new(epoch: Instant, slo: Slo) -> Tally {
        Tally {
            epoch,
            slo,
            ttft: Hist::default(),
            itl: Hist::default(),
            tpot: Hist::default(),
            e2e: Hist::default(),
            lag: Hist::default(),
            tps: Hist::default(),
            ok: 0,
            failed: 0,
            good: 0,
            failures: BTreeMap::new(),
            output_tokens: 0,
            prompt_tokens: 0,
            counted_server: 0,
            counted_client: 0,
            last_end: None,
            series: Vec::new(),
            absorbed: Duration::ZERO,
        }
    }

    fn second(&mut self, s: u64) -> Option<&mut Second> {
        let s = usize::try_from(s).ok().filter(|s| *s < MAX_SERIES)?;
        while self.series.len() <= s {
            let t = self.series.len() as u32;
            self.series.push(Second {
                t,
                ..Second::default()
            });
        }
        self.series.get_mut(s)
    }

    pub fn add(&mut self, o: &Outcome) {
        self.lag
            .record_duration(o.sent.saturating_duration_since(o.scheduled));
        self.last_end = Some(self.last_end.map_or(o.ended, |e| e.max(o.ended)));
        let end_second = o.ended.saturating_duration_since(self.epoch).as_secs();
        match &o.result {
            Err(f) => {
                self.failed += 1;
                let e = self
                    .failures
                    .entry(f.cause.clone())
                    .or_insert_with(|| (0, f.message.clone()));
                e.0 += 1;
                if let Some(s) = self.second(end_second) {
                    s.failed += 1;
                }
            }
            Ok(a) => {
                self.ok += 1;
                if self.slo.met_by(a) {
                    self.good += 1;
                }
                if let Some(t) = a.ttft {
                    self.ttft.record_duration(t);
                }
                for gap in &a.itl {
                    self.itl.record_duration(*gap);
                }
                if let Some(t) = a.tpot() {
                    self.tpot.record_duration(t);
                }
                self.e2e.record_duration(a.e2e);
                if let Some(tps) = a.tokens_per_second() {
                    self.tps.record((tps * 100.0).round() as u64);
                }
                self.output_tokens += a.output_tokens;
                self.prompt_tokens += a.prompt_tokens.unwrap_or(0);
                match a.counted_by {
                    CountedBy::Server => self.counted_server += 1,
                    CountedBy::Client => self.counted_client += 1,
                }
                if let Some(s) = self.second(end_second) {
                    s.ok += 1;
                }
                // The output tokens, spread over the seconds in which their
                // chunks arrived (or all at the end without streaming).
                let chunks: u64 = a.chunk_seconds.iter().map(|c| u64::from(c.1)).sum();
                if chunks == 0 {
                    let tokens = a.output_tokens as f64;
                    if let Some(s) = self.second(end_second) {
                        s.output_tokens += tokens;
                    }
                } else {
                    let per_chunk = a.output_tokens as f64 / chunks as f64;
                    for &(sec, n) in &a.chunk_seconds {
                        if let Some(s) = self.second(u64::from(sec)) {
                            s.output_tokens += per_chunk * f64::from(n);
                        }
                    }
                }
            }
        }
    }

    /// The step's duration: its start to the end of its last request,
    /// plus the durations of the rounds absorbed.
    pub fn duration(&self) -> Duration {
        self.absorbed
            + self
                .last_end
                .map_or(Duration::ZERO, |e| e.saturating_duration_since(self.epoch))
    }

    /// Adds a later round of the same step (run after this one, with other
    /// work in between): samples and counts add up, durations too, and its
    /// seconds follow this one's in the series.
    pub fn absorb(&mut self, other: &Tally) {
        for (mine, theirs) in [
            (&mut self.ttft, &other.ttft),
            (&mut self.itl, &other.itl),
            (&mut self.tpot, &other.tpot),
            (&mut self.e2e, &other.e2e),
            (&mut self.lag, &other.lag),
            (&mut self.tps, &other.tps),
        ] {
            mine.absorb(theirs);
        }
        self.ok += other.ok;
        self.failed += other.failed;
        self.good += other.good;
        for (cause, (n, example)) in &other.failures {
            self.failures
                .entry(cause.clone())
                .or_insert_with(|| (0, example.clone()))
                .0 += n;
        }
        self.output_tokens += other.output_tokens;
        self.prompt_tokens += other.prompt_tokens;
        self.counted_server += other.counted_server;
        self.counted_client += other.counted_client;
        let offset = self.duration().as_secs().max(self.series.len() as u64);
        for s in &other.series {
            let Ok(t) = u32::try_from(offset + u64::from(s.t)) else {
                break;
            };
            if t as usize >= MAX_SERIES {
                break;
            }
            // Seconds with nothing in them keep their place.
            while self.series.len() < t as usize {
                let t = self.series.len() as u32;
                self.series.push(Second {
                    t,
                    ..Second::default()
                });
            }
            self.series.push(Second { t, ..*s });
        }
        self.absorbed += other.duration();
    }

    /// Requests, tokens and latencies of the step.
    pub fn report(&self, sent: u64, peak_in_flight: u64, cpu: Option<CpuReport>) -> StepReport {
        let secs = self.duration().as_secs_f64();
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        StepReport {
            load: Default::default(),
            sent,
            ok: self.ok,
            failed: self.failed,
            failures: self
                .failures
                .iter()
                .map(|(k, (n, _))| (k.clone(), *n))
                .collect(),
            failure_examples: self
                .failures
                .iter()
                .map(|(k, (_, m))| (k.clone(), m.clone()))
                .collect(),
            duration_s: secs,
            request_throughput: per_sec(self.ok as f64),
            output_throughput: per_sec(self.output_tokens as f64),
            goodput: (!self.slo.is_empty()).then(|| per_sec(self.good as f64)),
            good: (!self.slo.is_empty()).then_some(self.good),
            output_tokens: self.output_tokens,
            prompt_tokens: self.prompt_tokens,
            tokens_counted_by: TokenCounts {
                server: self.counted_server,
                client_o200k: self.counted_client,
            },
            ttft_ms: self.ttft.stats(1000.0),
            itl_ms: self.itl.stats(1000.0),
            tpot_ms: self.tpot.stats(1000.0),
            e2e_ms: self.e2e.stats(1000.0),
            send_lag_ms: self.lag.stats(1000.0),
            output_tokens_per_s_per_request: self.tps.stats(100.0),
            ttft_distribution_ms: self.ttft.distribution(1000.0),
            itl_distribution_ms: self.itl.distribution(1000.0),
            peak_in_flight,
            client_cpu: cpu,
            series: self.series.clone(),
            interrupted: false,
        }
    }
}

/// The process's CPU time so far (user, system), from getrusage.
pub fn cpu_times() -> Option<(Duration, Duration)> {
    // SAFETY: getrusage writes into the zeroed struct it is given and
    // reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Some((tv(ru.ru_utime), tv(ru.ru_stime)))
}

/// CPU use between two readings, over `wall` of real time.
pub fn cpu_report(
    before: Option<(Duration, Duration)>,
    after: Option<(Duration, Duration)>,
    wall: Duration,
) -> Option<CpuReport> {
    let ((u0, s0), (u1, s1)) = (before?, after?);
    let user = u1.saturating_sub(u0).as_secs_f64();
    let system = s1.saturating_sub(s0).as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy = if wall.as_secs_f64() > 0.0 {
        (user + system) / wall.as_secs_f64()
    } else {
        0.0
    };
    Some(CpuReport {
        user_s: user,
        system_s: system,
        cores_busy: busy,
        cores_available: cores as u32,
        // Past 80% of every core, the client's own delays start to show in
        // the figures.
        saturated: busy > 0.8 * cores,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn answer(ttft: u64, e2e: u64, tokens: u64) -> Answer {
        Answer {
            ttft: Some(ms(ttft)),
            e2e: ms(e2e),
            itl: vec![],
            output_tokens: tokens,
            counted_by: CountedBy::Server,
            prompt_tokens: None,
            chunk_seconds: vec![],
        }
    }

    #[test]
    fn tpot_and_tokens_per_second_follow_their_definitions() {
        let a = answer(100, 1100, 11);
        assert_eq!(a.tpot(), Some(ms(100)));
        assert_eq!(a.tokens_per_second(), Some(10.0));
        assert_eq!(answer(100, 200, 1).tpot(), None);
    }

    #[test]
    fn slo_parse_and_judge() {
        let slo = Slo::parse("ttft=200ms, tpot=50ms").unwrap();
        assert_eq!(slo.ttft, Some(ms(200)));
        assert_eq!(slo.tpot, Some(ms(50)));
        assert!(slo.met_by(&answer(200, 700, 11)));
        assert!(!slo.met_by(&answer(201, 700, 11)));
        assert!(!slo.met_by(&answer(100, 700, 11)), "tpot 60ms");
        assert!(!slo.met_by(&answer(100, 1200, 11)));
        assert!(slo.met_by(&answer(100, 5000, 1)), "one token: tpot 0");
        assert!(Slo::parse("ttft").is_err());
        assert!(Slo::parse("latency=1s").is_err());
        assert!(Slo::parse("ttft=fast").is_err());
    }

    #[test]
    fn histogram_extremes_and_mean_are_exact_percentiles_close() {
        let mut h = Hist::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.stats(1000.0).unwrap();
        assert_eq!((s.min, s.max, s.count), (1.0, 1000.0, 1000));
        assert_eq!(s.mean, 500.5);
        for (p, want) in [(s.p50, 500.0), (s.p90, 900.0), (s.p99, 990.0)] {
            assert!((p - want).abs() / want < 0.001, "{p} vs {want}");
        }
        let mut one = Hist::default();
        one.record(100_000);
        let s = one.stats(1000.0).unwrap();
        assert_eq!((s.p50, s.p99, s.max), (100.0, 100.0, 100.0));
    }
}
