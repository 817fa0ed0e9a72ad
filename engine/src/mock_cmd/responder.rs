//! What `sluice mock` answers to each request, and its counters.
//!
//! The reply is decided per request on the connection's task, so this is
//! the mock's hot path: no file is read, nothing is serialized per token
//! (synthesized text comes from [`TextGenerator`]'s ready-made events), and
//! random draws are a hash of the seed and the request's index, not a
//! shared generator.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testkit::{Fault, ModelRequest, Reply, Responder, TextGenerator, TextShape, Wire};

use super::args::{Dist, FaultRule, MAX_TOKENS, REQUEST_FALLBACK, Tokens, When};

/// How synthesized text is shaped.
#[derive(Clone, Debug, PartialEq)]
pub struct Synth {
    pub tokens: Tokens,
    pub ttft: Dist<Duration>,
    pub itl: Dist<Duration>,
    pub usage: bool,
}

/// One reply of the rotation.
#[derive(Clone, Debug)]
pub enum Entry {
    Synth(Synth),
    /// Made once per wire; `None` for a recording of the other wire.
    Fixed {
        openai: Option<Reply>,
        anthropic: Option<Reply>,
        usage: bool,
    },
}

impl Entry {
    fn serves(&self, wire: Wire) -> bool {
        match self {
            Entry::Synth(_) => true,
            Entry::Fixed {
                openai, anthropic, ..
            } => match wire {
                Wire::OpenAi => openai.is_some(),
                Wire::Anthropic => anthropic.is_some(),
            },
        }
    }
}

/// The checked answer plan of one `sluice mock`.
#[derive(Debug)]
pub struct Answers {
    /// Never empty: each wire takes the entries that serve it in turn.
    pub entries: Vec<Entry>,
    pub faults: Vec<FaultRule>,
    pub seed: u64,
    /// Divides synthesized and recorded delays.
    pub speed: f64,
}

pub struct MockResponder {
    answers: Answers,
    /// Per wire (OpenAI, Anthropic): the entries serving it, and a turn counter.
    rotation: [(Vec<usize>, AtomicUsize); 2],
    generator: TextGenerator,
    pub stats: Stats,
}

fn wire_index(wire: Wire) -> usize {
    match wire {
        Wire::OpenAi => 0,
        Wire::Anthropic => 1,
    }
}

impl MockResponder {
    pub fn new(answers: Answers) -> MockResponder {
        let serving = |w| {
            let list = (0..answers.entries.len())
                .filter(|&i| answers.entries[i].serves(w))
                .collect();
            (list, AtomicUsize::new(0))
        };
        MockResponder {
            rotation: [serving(Wire::OpenAi), serving(Wire::Anthropic)],
            answers,
            generator: TextGenerator::default(),
            stats: Stats::new(),
        }
    }

    fn synthesize(&self, s: &Synth, req: &ModelRequest<'_>) -> Reply {
        let k = req.index as u64;
        let limit = max_tokens(req.body, req.wire);
        let (tokens, cut) = match s.tokens {
            Tokens::Request => (limit.unwrap_or(REQUEST_FALLBACK), limit.is_some()),
            Tokens::Dist(d) => {
                let n = draw_usize(d, self.answers.seed, k, 1);
                match limit {
                    Some(m) if n > m => (m, true),
                    _ => (n, false),
                }
            }
        };
        let shape = TextShape {
            tokens: tokens.min(MAX_TOKENS),
            cut,
            // About four bytes a token: close enough for a gateway's
            // accounting, and free to compute.
            prompt: (req.body_len as u64 / 4).max(1),
            usage: s.usage && usage_asked(req),
            ttft: draw_duration(s.ttft, self.answers.seed, k, 2),
            itl: draw_duration(s.itl, self.answers.seed, k, 3),
        };
        self.generator.reply(req.wire, &shape)
    }
}

/// The request's `max_tokens` (OpenAI also `max_completion_tokens`).
fn max_tokens(body: &Value, wire: Wire) -> Option<usize> {
    let get = |k: &str| body.get(k).and_then(Value::as_u64);
    let n = match wire {
        Wire::OpenAi => get("max_completion_tokens").or_else(|| get("max_tokens")),
        Wire::Anthropic => get("max_tokens"),
    }?;
    Some(usize::try_from(n).unwrap_or(usize::MAX).min(MAX_TOKENS))
}

/// Whether a real provider would report usage: Anthropic always, OpenAI
/// in a whole answer, or in a stream that sets
/// `stream_options.include_usage`.
fn usage_asked(req: &ModelRequest<'_>) -> bool {
    let streamed = req.body.get("stream") != Some(&Value::Bool(false));
    req.wire == Wire::Anthropic
        || !streamed
        || req.body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true))
}

impl Responder for MockResponder {
    fn reply(&self, req: &ModelRequest<'_>) -> Result<Reply, (u16, String)> {
        let (list, turn) = &self.rotation[wire_index(req.wire)];
        if list.is_empty() {
            let msg = format!(
                "this mock has no reply for the {} API: its recordings are all of the other one",
                req.wire
            );
            self.stats.record(404, &[]);
            return Err((404, msg));
        }
        let at = list[turn.fetch_add(1, Ordering::Relaxed) % list.len()];
        let mut reply = match &self.answers.entries[at] {
            Entry::Synth(s) => self.synthesize(s, req),
            Entry::Fixed {
                openai,
                anthropic,
                usage,
            } => {
                let reply = match req.wire {
                    Wire::OpenAi => openai,
                    Wire::Anthropic => anthropic,
                };
                let mut reply = reply.clone().unwrap_or_else(|| unreachable!());
                if !(*usage && usage_asked(req)) {
                    reply.faults.push(Fault::OmitUsage);
                }
                reply
            }
        };
        let k = req.index as u64;
        let before = reply.faults.len();
        for (i, rule) in self.answers.faults.iter().enumerate() {
            if strikes(rule.when, self.answers.seed, k, i as u64) {
                reply.faults.push(rule.fault.clone());
            }
        }
        if self.answers.speed != 1.0 && reply.speed == 1.0 {
            reply.speed = self.answers.speed;
        }
        let status = reply
            .faults
            .iter()
            .find_map(|f| match f {
                Fault::Status { status, .. } => Some(*status),
                _ => None,
            })
            .unwrap_or(200);
        // Scripted faults of the entry count too; the `OmitUsage` that
        // stands for "usage not asked" does not.
        let counted: Vec<&'static str> = reply
            .faults
            .iter()
            .enumerate()
            .filter(|(i, f)| *i >= before || **f != Fault::OmitUsage)
            .map(|(_, f)| fault_name(f))
            .collect();
        self.stats.record(status, &counted);
        Ok(reply)
    }

    fn route(&self, method: &str, path: &str) -> Option<(u16, Vec<u8>)> {
        (method == "GET" && path == "/mock/stats")
            .then(|| (200, self.stats.json().to_string().into_bytes()))
    }
}

/// A number from 0 to 2^64-1, the same for the same seed, request and
/// purpose (splitmix64 of their mix).
fn hash(seed: u64, k: u64, salt: u64) -> u64 {
    let mut z = seed
        .wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(salt.wrapping_mul(0xd1b5_4a32_d192_ed03));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw_usize(d: Dist<usize>, seed: u64, k: u64, salt: u64) -> usize {
    match d {
        Dist::Fixed(n) => n,
        Dist::Uniform(lo, hi) => {
            let span = (hi - lo) as u64 + 1;
            lo + (hash(seed, k, salt) % span) as usize
        }
    }
}

fn draw_duration(d: Dist<Duration>, seed: u64, k: u64, salt: u64) -> Duration {
    match d {
        Dist::Fixed(t) => t,
        Dist::Uniform(lo, hi) => {
            let span = (hi - lo).as_nanos().min(u64::MAX as u128) as u64;
            let off = hash(seed, k, salt) % span.saturating_add(1);
            lo + Duration::from_nanos(off)
        }
    }
}

/// Whether a fault rule strikes request `k` (0-based).
fn strikes(when: When, seed: u64, k: u64, rule: u64) -> bool {
    match when {
        When::Always => true,
        When::Every(n) => (k + 1).is_multiple_of(n),
        // The top 53 bits as a fraction in [0, 1).
        When::Probability(p) => {
            ((hash(seed, k, 100 + rule) >> 11) as f64 / (1u64 << 53) as f64) < p
        }
    }
}

pub fn fault_name(f: &Fault) -> &'static str {
    match f {
        Fault::Status { .. } => "status",
        Fault::DelayHeaders(_) => "delay_headers",
        Fault::StallAfter { .. } => "stall_after",
        Fault::HoldAfter { .. } => "hold_after",
        Fault::DisconnectAfter { .. } => "disconnect_after",
        Fault::MalformedAt(_) => "malformed_at",
        Fault::Truncate => "truncate",
        Fault::OmitUsage => "omit_usage",
        Fault::Fragment(_) => "fragment",
        Fault::ErrorEventAfter(_) => "error_event_after",
        Fault::ConnectionClose => "connection_close",
        Fault::CloseIdleAfter(_) => "close_idle_after",
        Fault::HugeToolArguments { .. } => "huge_tool_arguments",
        Fault::EndlessToolArguments { .. } => "endless_tool_arguments",
        Fault::ManyToolCalls { .. } => "many_tool_calls",
        Fault::AbsurdUsage { .. } => "absurd_usage",
        Fault::EchoKeyStatus(_) => "echo_key_status",
        Fault::EchoKeyEventAfter(_) => "echo_key_event_after",
        Fault::EchoKeyModel => "echo_key_model",
        Fault::TextAfterFinish { .. } => "text_after_finish",
        Fault::SlowDrip { .. } => "slow_drip",
        Fault::Reasoning { .. } => "reasoning",
        Fault::Refusal { .. } => "refusal",
    }
}

/// Requests answered, by status and by fault, and the process's CPU time.
pub struct Stats {
    started: Instant,
    /// CPU time spent before serving (start-up, reading recordings), left
    /// out of the CPU per request.
    cpu_at_start: Duration,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_fault: BTreeMap<&'static str, u64>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            started: Instant::now(),
            cpu_at_start: cpu_time(),
            counts: Mutex::new(Counts::default()),
        }
    }

    fn record(&self, status: u16, faults: &[&'static str]) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.requests += 1;
        *c.by_status.entry(status).or_default() += 1;
        for f in faults {
            *c.by_fault.entry(f).or_default() += 1;
        }
    }

    /// CPU microseconds per request served, start-up left out.
    fn per_request_us(&self, cpu: Duration, requests: u64) -> Option<f64> {
        let serving = cpu.saturating_sub(self.cpu_at_start);
        (requests > 0).then(|| (serving.as_secs_f64() * 1e7 / requests as f64).round() / 10.0)
    }

    /// `GET /mock/stats`.
    pub fn json(&self) -> Value {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = cpu_time();
        let per_request = self.per_request_us(cpu, c.requests);
        json!({
            "uptime_s": round3(self.started.elapsed().as_secs_f64()),
            "requests": c.requests,
            "by_status": c.by_status.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "by_fault": c.by_fault,
            "cpu_s": round3(cpu.as_secs_f64()),
            "cpu_us_per_request": per_request,
        })
    }

    /// The line printed when the mock stops.
    pub fn summary(&self) -> String {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let cpu = cpu_time();
        let statuses: Vec<String> = c
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let faults: Vec<String> = c
            .by_fault
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let per_request = match self.per_request_us(cpu, c.requests) {
            Some(us) => format!(", {us:.1} µs per request"),
            None => String::new(),
        };
        format!(
            "sluice mock: {} requests ({}){}; CPU {:.3} s{per_request}; up {:.1} s",
            c.requests,
            if statuses.is_empty() {
                "none".to_owned()
            } else {
                statuses.join(", ")
            },
            if faults.is_empty() {
                String::new()
            } else {
                format!(", faults {}", faults.join(", "))
            },
            cpu.as_secs_f64(),
            self.started.elapsed().as_secs_f64(),
        )
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// User and system CPU time of this process so far.
pub fn cpu_time() -> Duration {
    // SAFETY: `usage` is a valid, writable rusage; getrusage only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(wire: Wire, body: &Value, index: usize) -> ModelRequest<'_> {
        ModelRequest {
            wire,
            body,
            body_len: 400,
            index,
        }
    }

    fn synth(tokens: Tokens) -> Synth {
        Synth {
            tokens,
            ttft: Dist::Fixed(Duration::ZERO),
            itl: Dist::Fixed(Duration::ZERO),
            usage: true,
        }
    }

    fn answers(entries: Vec<Entry>, faults: Vec<FaultRule>) -> MockResponder {
        MockResponder::new(Answers {
            entries,
            faults,
            seed: 1,
            speed: 1.0,
        })
    }

    fn events(r: &Reply) -> Vec<String> {
        match &r.body {
            sluice_testkit::Body::Events(e) => e
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect(),
            _ => panic!("not events"),
        }
    }

    #[test]
    fn tokens_follow_the_distribution_and_stop_at_max_tokens() {
        let m = answers(
            vec![Entry::Synth(synth(Tokens::Dist(Dist::Uniform(3, 9))))],
            vec![],
        );
        let body = json!({"stream_options": {"include_usage": true}});
        let mut seen = std::collections::BTreeSet::new();
        for k in 0..200 {
            let r = m.reply(&request(Wire::OpenAi, &body, k)).unwrap();
            // role, tokens, finish, usage, [DONE]
            seen.insert(events(&r).len() - 4);
        }
        assert_eq!(seen, (3..=9).collect());
        let capped = json!({"max_tokens": 2});
        let r = m.reply(&request(Wire::OpenAi, &capped, 0)).unwrap();
        let ev = events(&r);
        assert_eq!(ev.len(), 5, "role, 2 tokens, finish, [DONE]: {ev:?}");
        assert!(ev[3].contains("\"finish_reason\":\"length\""), "{ev:?}");
        let req = answers(vec![Entry::Synth(synth(Tokens::Request))], vec![]);
        let r = req
            .reply(&request(Wire::Anthropic, &json!({"max_tokens": 7}), 0))
            .unwrap();
        // message_start, block start, ping, 7 deltas, block stop, message_delta, stop
        assert_eq!(events(&r).len(), 13);
        let r = req.reply(&request(Wire::OpenAi, &json!({}), 1)).unwrap();
        assert_eq!(events(&r).len(), REQUEST_FALLBACK + 3);
    }

    #[test]
    fn usage_is_reported_as_a_real_provider_does() {
        let m = answers(
            vec![Entry::Synth(synth(Tokens::Dist(Dist::Fixed(2))))],
            vec![],
        );
        let has_usage = |body: Value, wire| {
            let r = m.reply(&request(wire, &body, 0)).unwrap();
            events(&r)
                .iter()
                .any(|e| e.contains("\"usage\"") && !e.contains("message_start"))
        };
        assert!(!has_usage(json!({"stream": true}), Wire::OpenAi));
        assert!(has_usage(
            json!({"stream": true, "stream_options": {"include_usage": true}}),
            Wire::OpenAi
        ));
        assert!(has_usage(json!({"stream": false}), Wire::OpenAi));
        assert!(has_usage(json!({"stream": true}), Wire::Anthropic));
        let off = answers(
            vec![Entry::Synth(Synth {
                usage: false,
                ..synth(Tokens::Dist(Dist::Fixed(2)))
            })],
            vec![],
        );
        let r = off
            .reply(&request(Wire::Anthropic, &json!({"stream": true}), 0))
            .unwrap();
        assert!(!events(&r).iter().any(|e| e.contains("output_tokens\":2")));
    }

    #[test]
    fn faults_strike_as_often_as_asked_and_are_counted() {
        let rules = vec![
            FaultRule {
                fault: Fault::Truncate,
                when: When::Every(4),
            },
            FaultRule {
                fault: Fault::Status {
                    status: 429,
                    retry_after: None,
                },
                when: When::Probability(0.25),
            },
        ];
        let m = answers(
            vec![Entry::Synth(synth(Tokens::Dist(Dist::Fixed(1))))],
            rules,
        );
        let body = json!({});
        let mut truncated = Vec::new();
        let mut refused = 0;
        for k in 0..4000 {
            let r = m.reply(&request(Wire::OpenAi, &body, k)).unwrap();
            if r.faults.contains(&Fault::Truncate) {
                truncated.push(k);
            }
            refused += r
                .faults
                .iter()
                .filter(|f| matches!(f, Fault::Status { .. }))
                .count();
        }
        assert_eq!(truncated.len(), 1000);
        assert_eq!(&truncated[..3], [3, 7, 11]);
        assert!((850..1150).contains(&refused), "{refused}");
        let stats = m.stats.json();
        assert_eq!(stats["requests"], 4000);
        assert_eq!(stats["by_fault"]["truncate"], 1000);
        assert_eq!(stats["by_status"]["429"], refused);
        assert_eq!(
            stats["by_status"]["200"].as_u64().unwrap() + refused as u64,
            4000
        );
    }

    #[test]
    fn each_wire_rotates_through_the_entries_that_serve_it() {
        let only_openai = Entry::Fixed {
            openai: Some(Reply::text(&["x"])),
            anthropic: None,
            usage: true,
        };
        let m = answers(
            vec![
                only_openai,
                Entry::Synth(synth(Tokens::Dist(Dist::Fixed(5)))),
            ],
            vec![],
        );
        let body = json!({"stream_options": {"include_usage": true}});
        let lens: Vec<usize> = (0..4)
            .map(|k| events(&m.reply(&request(Wire::OpenAi, &body, k)).unwrap()).len())
            .collect();
        assert_eq!(lens, [5, 9, 5, 9]);
        // Anthropic requests only ever get the synthesized text.
        for k in 0..3 {
            let r = m.reply(&request(Wire::Anthropic, &body, k)).unwrap();
            assert_eq!(events(&r).len(), 11);
        }
        let none = answers(
            vec![Entry::Fixed {
                openai: Some(Reply::text(&["x"])),
                anthropic: None,
                usage: true,
            }],
            vec![],
        );
        let err = none.reply(&request(Wire::Anthropic, &body, 0)).unwrap_err();
        assert_eq!(err.0, 404);
        assert!(err.1.contains("anthropic"), "{}", err.1);
    }

    #[test]
    fn the_stats_route_and_cpu() {
        let m = answers(
            vec![Entry::Synth(synth(Tokens::Dist(Dist::Fixed(1))))],
            vec![],
        );
        assert!(m.route("GET", "/other").is_none());
        assert!(m.route("POST", "/mock/stats").is_none());
        let (status, body) = m.route("GET", "/mock/stats").unwrap();
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["requests"], 0);
        assert!(v["cpu_s"].as_f64().unwrap() >= 0.0);
        assert!(v["cpu_us_per_request"].is_null());
        assert!(
            m.stats
                .summary()
                .starts_with("sluice mock: 0 requests (none)")
        );
    }
}
