//! Raw scenario -> [`Scenario`]: durations parsed, fixtures loaded and
//! checked, faults turned into the testkit's, every problem reported with
//! its position.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::{Fault, Recording, Reply, Wire};

use super::api::Api;
use super::spec::{RawExpect, RawFault, RawPaths, RawScenario, RawTurn};
use crate::config::node::{self, Node};
use crate::config::{Diagnostic, Pos, Spanned, diag};

/// Which clock a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// tokio's paused clock: sleeps take no real time.
    Virtual,
    Real,
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The file name without `.yaml`.
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    pub pipeline: String,
    /// The route the client calls.
    pub api: Api,
    pub pipelines_dir: PathBuf,
    /// The wire named by the scenario or its fixtures, if any.
    pub wire: Option<Wire>,
    pub clock: Clock,
    pub limit: Duration,
    /// The body sent ([`Api::body`]: `model` filled in).
    pub request: Value,
    pub client: ClientPlan,
    pub turns: Vec<Turn>,
    pub expect: Expect,
}

#[derive(Debug, Clone, Default)]
pub struct ClientPlan {
    pub disconnect_after: Option<Duration>,
    pub disconnect_after_events: Option<usize>,
    pub headers: Vec<(String, String)>,
}

/// One upstream reply, made into a testkit [`Reply`] once the wire is known.
#[derive(Debug, Clone)]
pub struct Turn {
    pub body: TurnBody,
    pub pace: Option<Duration>,
    pub speed: Option<f64>,
    pub faults: Vec<Fault>,
}

#[derive(Debug, Clone)]
pub enum TurnBody {
    Recording(Box<Recording>),
    Text(Vec<String>),
    Flood(String),
    /// The model calls `name` with `arguments` (JSON text); `id` or the
    /// wire's usual default.
    /// `cut`: the provider stops at `max_tokens` inside the arguments.
    ToolCall {
        id: Option<String>,
        name: String,
        arguments: String,
        cut: bool,
    },
    /// The model declines, one piece per item.
    Refusal(Vec<String>),
}

impl Turn {
    pub fn reply(&self, wire: Wire) -> Reply {
        let words: Vec<&str>;
        let mut reply = match (&self.body, wire) {
            (TurnBody::Recording(r), _) => r.reply(),
            (TurnBody::Text(t), w) => {
                words = t.iter().map(String::as_str).collect();
                match w {
                    Wire::OpenAi => Reply::text(&words),
                    Wire::Anthropic => Reply::anthropic_text(&words),
                }
            }
            (TurnBody::Flood(tok), Wire::OpenAi) => Reply::flood(tok),
            (TurnBody::Flood(tok), Wire::Anthropic) => Reply::anthropic_flood(tok),
            (
                TurnBody::ToolCall {
                    id,
                    name,
                    arguments,
                    cut,
                },
                w,
            ) => match (w, cut) {
                (Wire::OpenAi, false) => {
                    Reply::tool_call(id.as_deref().unwrap_or("call_1"), name, arguments)
                }
                (Wire::OpenAi, true) => {
                    Reply::tool_call_cut(id.as_deref().unwrap_or("call_1"), name, arguments)
                }
                (Wire::Anthropic, false) => {
                    Reply::anthropic_tool_call(id.as_deref().unwrap_or("toolu_1"), name, arguments)
                }
                (Wire::Anthropic, true) => Reply::anthropic_tool_call_cut(
                    id.as_deref().unwrap_or("toolu_1"),
                    name,
                    arguments,
                ),
            },
            (TurnBody::Refusal(t), w) => {
                words = t.iter().map(String::as_str).collect();
                match w {
                    Wire::OpenAi => Reply::refusal(&words),
                    Wire::Anthropic => Reply::anthropic_refusal(&words),
                }
            }
        };
        if let Some(p) = self.pace {
            reply = reply.pace(p);
        }
        if let Some(s) = self.speed {
            reply = reply.speed(s);
        }
        for f in &self.faults {
            reply = reply.fault(f.clone());
        }
        reply
    }
}

/// Expected values, each with the position it was written at (for reports).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub status: Option<u16>,
    /// `Some(None)`: no error expected.
    pub error: Option<Option<String>>,
    pub finish_reason: Option<String>,
    pub events: Option<Vec<String>>,
    pub events_contain: Option<Vec<String>>,
    pub event_counts: BTreeMap<String, u64>,
    pub text: Option<String>,
    pub refusal: Option<String>,
    pub usage: Vec<(String, Value)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<(String, Value)>,
    pub ledger: Option<LedgerExpect>,
    pub upstream_closed_within: Option<Duration>,
    pub upstream_request: Vec<(String, Value)>,
    pub upstream_calls: Option<u64>,
    pub upstream_events_at_most: Option<u64>,
    pub tool_results_sent: Option<u64>,
    pub tool_result_contains: Option<String>,
    pub secret_absent: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct LedgerExpect {
    pub status: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub estimated: Option<bool>,
    pub error_code: Option<Option<String>>,
    pub cost_within_reservation: Option<bool>,
}

/// Where relative paths resolve when the scenario does not say.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub pipelines: PathBuf,
    pub recordings: PathBuf,
}

const DEFAULT_LIMIT: Duration = Duration::from_secs(600);

/// Reads and checks one scenario file; every problem is returned, sorted.
pub fn load(file: &Path, defaults: &Defaults) -> Result<Scenario, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Diagnostic::error(
            file,
            Pos::START,
            format!("cannot read scenario file: {e}"),
        )]
    })?;
    parse(file, &text, defaults)
}

/// Checks a scenario given as text; `file` names it and anchors relative paths.
pub fn parse(file: &Path, text: &str, defaults: &Defaults) -> Result<Scenario, Vec<Diagnostic>> {
    let mut cx = Cx {
        file: file.to_path_buf(),
        diags: Vec::new(),
    };
    let node: Node = node::parse(text).map_err(|(pos, msg)| vec![cx.diag(pos, msg)])?;
    if matches!(node.kind, node::Kind::Null) {
        return Err(vec![cx.diag(Pos::START, "scenario file is empty")]);
    }
    let Some(raw) = cx.read::<RawScenario>(&node) else {
        return Err(cx.finish());
    };
    let scenario = cx.scenario(raw, defaults);
    match scenario {
        Some(s) if cx.diags.is_empty() => Ok(s),
        _ => Err(cx.finish()),
    }
}

/// Collects the diagnostics of one file while its parts are checked;
/// `sluice mock --config` uses it for its replies and faults, which are
/// written as scenario turns and faults.
pub(crate) struct Cx {
    file: PathBuf,
    diags: Vec<Diagnostic>,
}

impl Cx {
    pub(crate) fn new(file: &Path) -> Cx {
        Cx {
            file: file.to_path_buf(),
            diags: Vec::new(),
        }
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.diags.is_empty()
    }

    fn diag(&self, pos: Pos, msg: impl Into<String>) -> Diagnostic {
        Diagnostic::error(&self.file, pos, msg)
    }

    pub(crate) fn error(&mut self, pos: Pos, msg: impl Into<String>) {
        let d = self.diag(pos, msg);
        self.diags.push(d);
    }

    /// `node` read as a `T`: unknown keys are noted as errors, and a shape
    /// that cannot be read is one too (then `None`).
    pub(crate) fn read<'a, T: serde::Deserialize<'a>>(&mut self, node: &'a Node) -> Option<T> {
        let (result, notes) = node::from_node::<T>(node);
        for n in notes {
            self.error(n.pos, n.message);
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(e.pos.unwrap_or(Pos::START), e.message);
                None
            }
        }
    }

    pub(crate) fn finish(mut self) -> Vec<Diagnostic> {
        diag::sort(&mut self.diags);
        self.diags
    }

    fn dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    pub(crate) fn duration(&mut self, raw: &Spanned<String>, what: &str) -> Option<Duration> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(d) => Some(d),
            Err(_) => {
                self.error(
                    raw.pos,
                    format!(
                        "invalid duration \"{}\" for {what}, expected a number and a unit such as 250ms, 10s or 2m",
                        raw.value
                    ),
                );
                None
            }
        }
    }

    fn scenario(&mut self, raw: RawScenario, defaults: &Defaults) -> Option<Scenario> {
        let name = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pipelines_dir = match &raw.pipelines {
            Some(p) => self.dir().join(&p.value),
            None => defaults.pipelines.clone(),
        };
        let recordings = match &raw.recordings {
            Some(p) => self.dir().join(&p.value),
            None => defaults.recordings.clone(),
        };
        let mut wire = raw.wire.as_ref().and_then(|w| match w.value.as_str() {
            "openai" => Some(Wire::OpenAi),
            "anthropic" => Some(Wire::Anthropic),
            other => {
                self.error(
                    w.pos,
                    format!("unknown wire \"{other}\", expected \"openai\" or \"anthropic\""),
                );
                None
            }
        });
        let api = match &raw.api {
            None => Api::Pipeline,
            Some(a) => Api::parse(&a.value).unwrap_or_else(|| {
                self.error(
                    a.pos,
                    format!("unknown api \"{}\", expected {}", a.value, Api::NAMES),
                );
                Api::Pipeline
            }),
        };
        let clock = match raw.clock.as_ref().map(|c| (c.value.as_str(), c.pos)) {
            None | Some(("virtual", _)) => Clock::Virtual,
            Some(("real", _)) => Clock::Real,
            Some((other, pos)) => {
                self.error(
                    pos,
                    format!("unknown clock \"{other}\", expected \"virtual\" or \"real\""),
                );
                Clock::Virtual
            }
        };
        let limit = match &raw.limit {
            Some(l) => self.duration(l, "limit").unwrap_or(DEFAULT_LIMIT),
            None => DEFAULT_LIMIT,
        };
        if !raw.request.value.is_object() {
            self.error(
                raw.request.pos,
                match api {
                    Api::Pipeline => "request must be a mapping: the JSON body sent to the pipeline, e.g. {input: hello}",
                    Api::ChatCompletions => "request must be a mapping: the Chat Completions body, e.g. {messages: [{role: user, content: hi}], stream: true}",
                    Api::Messages => "request must be a mapping: the Messages body, e.g. {max_tokens: 100, messages: [{role: user, content: hi}], stream: true}",
                },
            );
        }
        let client = self.client(raw.client.unwrap_or_default());
        if raw.turns.value.is_empty() {
            self.error(
                raw.turns.pos,
                "turns is empty, expected at least one upstream reply",
            );
        }
        let mut turns = Vec::new();
        for t in &raw.turns.value {
            let turn = self.turn(t, &recordings, &mut wire);
            turns.extend(turn);
        }
        if let (Api::Messages, Some(r)) = (api, &raw.expect.refusal) {
            self.error(
                r.pos,
                "refusal is not an expectation for api: messages (a refusal there is text with stop_reason: refusal; use text and finish_reason)",
            );
        }
        let expect = self.expect(raw.expect);
        let request = api.body(&raw.request.value, &raw.pipeline.value);
        Some(Scenario {
            name,
            file: self.file.clone(),
            description: raw.description,
            pipeline: raw.pipeline.value,
            api,
            pipelines_dir,
            wire,
            clock,
            limit,
            request,
            client,
            turns,
            expect,
        })
    }

    fn client(&mut self, raw: super::spec::RawClient) -> ClientPlan {
        ClientPlan {
            disconnect_after: raw
                .disconnect_after
                .as_ref()
                .and_then(|d| self.duration(d, "disconnect_after")),
            disconnect_after_events: raw.disconnect_after_events.map(|n| n.value as usize),
            headers: raw
                .headers
                .into_iter()
                .map(|(k, v)| (k.value, v.value))
                .collect(),
        }
    }

    pub(crate) fn turn(
        &mut self,
        t: &Spanned<RawTurn>,
        recordings: &Path,
        wire: &mut Option<Wire>,
    ) -> Option<Turn> {
        let given = [
            t.fixture.is_some(),
            t.text.is_some(),
            t.flood.is_some(),
            t.tool_call.is_some(),
            t.refusal.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.error(
                t.pos,
                "a turn needs exactly one of fixture, text, flood, tool_call or refusal",
            );
            return None;
        }
        let body = if let Some(f) = &t.fixture {
            let path = recordings.join(&f.value);
            let rec = match Recording::load(&path) {
                Ok(r) => r,
                Err(e) => {
                    self.error(f.pos, format!("fixture \"{}\" is not usable: {e}", f.value));
                    return None;
                }
            };
            match *wire {
                Some(w) if w != rec.wire => self.error(
                    f.pos,
                    format!(
                        "fixture \"{}\" is an {} stream, but the scenario's wire is {w}",
                        f.value, rec.wire
                    ),
                ),
                Some(_) => {}
                None => *wire = Some(rec.wire),
            }
            TurnBody::Recording(Box::new(rec))
        } else if let Some(words) = &t.text {
            TurnBody::Text(words.value.clone())
        } else if let Some(words) = &t.refusal {
            TurnBody::Refusal(words.value.clone())
        } else if let Some(call) = &t.tool_call {
            let arguments = match &call.arguments {
                None => "{}".to_owned(),
                Some(a) if a.value.is_object() => a.value.to_string(),
                Some(a) => {
                    self.error(
                        a.pos,
                        "tool_call arguments must be a mapping, e.g. {order_id: 7}",
                    );
                    return None;
                }
            };
            TurnBody::ToolCall {
                id: call.id.as_ref().map(|i| i.value.clone()),
                name: call.name.value.clone(),
                arguments,
                cut: call.cut,
            }
        } else {
            TurnBody::Flood(t.flood.as_ref()?.value.clone())
        };
        let pace = t.pace.as_ref().and_then(|p| self.duration(p, "pace"));
        let speed = t.speed.as_ref().and_then(|s| {
            if s.value.is_finite() && s.value > 0.0 {
                Some(s.value)
            } else {
                self.error(
                    s.pos,
                    format!("speed must be a number above zero, found {}", s.value),
                );
                None
            }
        });
        let faults = t.faults.iter().filter_map(|f| self.fault(f)).collect();
        Some(Turn {
            body,
            pace,
            speed,
            faults,
        })
    }

    pub(crate) fn fault(&mut self, f: &Spanned<RawFault>) -> Option<Fault> {
        Some(match &f.value {
            RawFault::Status(s) => {
                if !(100..=599).contains(&s.code.value) {
                    self.error(
                        s.code.pos,
                        format!(
                            "status code must be between 100 and 599, found {}",
                            s.code.value
                        ),
                    );
                    return None;
                }
                Fault::Status {
                    status: s.code.value as u16,
                    retry_after: s.retry_after.as_ref().map(|r| r.value),
                }
            }
            RawFault::DelayHeaders(d) => Fault::DelayHeaders(self.duration(d, "delay_headers")?),
            RawFault::StallAfter(s) => Fault::StallAfter {
                events: s.events.value as usize,
                duration: match &s.duration {
                    None => None,
                    Some(d) if d.value.trim() == "forever" => None,
                    Some(d) => Some(self.duration(d, "stall_after.for")?),
                },
            },
            RawFault::DisconnectAfter(d) => Fault::DisconnectAfter {
                events: d.events.value as usize,
                reset: d.reset,
            },
            RawFault::MalformedAt(n) => Fault::MalformedAt(n.value as usize),
            RawFault::Truncate => Fault::Truncate,
            RawFault::OmitUsage => Fault::OmitUsage,
            RawFault::Fragment(n) => Fault::Fragment(n.value as usize),
            RawFault::ErrorEventAfter(n) => Fault::ErrorEventAfter(n.value as usize),
            RawFault::HugeToolArguments(h) => Fault::HugeToolArguments {
                name: tool_name(&h.name),
                bytes: h.bytes.value as usize,
                fragment: self.positive(&h.fragment, "huge_tool_arguments.fragment")?,
            },
            RawFault::EndlessToolArguments(e) => Fault::EndlessToolArguments {
                name: tool_name(&e.name),
                fragment: self.positive(&e.fragment, "endless_tool_arguments.fragment")?,
            },
            RawFault::ManyToolCalls(m) => Fault::ManyToolCalls {
                name: tool_name(&m.name),
                count: m.count.value as usize,
            },
            RawFault::AbsurdUsage(u) => Fault::AbsurdUsage {
                prompt: self.token_count(u.prompt.as_ref(), "absurd_usage.prompt")?,
                completion: self.token_count(u.completion.as_ref(), "absurd_usage.completion")?,
            },
            RawFault::EchoKeyStatus(s) => {
                if !(100..=599).contains(&s.value) {
                    self.error(
                        s.pos,
                        format!("status code must be between 100 and 599, found {}", s.value),
                    );
                    return None;
                }
                Fault::EchoKeyStatus(s.value as u16)
            }
            RawFault::EchoKeyEventAfter(n) => Fault::EchoKeyEventAfter(n.value as usize),
            RawFault::EchoKeyModel => Fault::EchoKeyModel,
            RawFault::TextAfterFinish(d) => Fault::TextAfterFinish {
                text: delta_text(d),
                count: d.count.as_ref().map(|c| c.value as usize),
            },
            RawFault::SlowDrip(d) => Fault::SlowDrip {
                head: match &d.head {
                    Some(h) => self.duration(h, "slow_drip.head")?,
                    None => Duration::ZERO,
                },
                body: match &d.body {
                    Some(b) => self.duration(b, "slow_drip.body")?,
                    None => Duration::ZERO,
                },
            },
            RawFault::Reasoning(d) => Fault::Reasoning {
                text: delta_text(d),
                count: d.count.as_ref().map_or(1, |c| c.value as usize),
            },
            RawFault::Refusal(d) => Fault::Refusal {
                text: delta_text(d),
                count: d.count.as_ref().map_or(1, |c| c.value as usize),
            },
        })
    }

    fn positive(&mut self, n: &Spanned<u64>, what: &str) -> Option<usize> {
        if n.value == 0 {
            self.error(n.pos, format!("{what} must be at least 1, found 0"));
            return None;
        }
        Some(n.value as usize)
    }

    /// `Some(None)` when not given; `None` (reported) when not an integer
    /// from `i64::MIN` to `u64::MAX`.
    fn token_count(&mut self, v: Option<&Spanned<Value>>, what: &str) -> Option<Option<i128>> {
        let Some(v) = v else {
            return Some(None);
        };
        let n = v
            .value
            .as_u64()
            .map(i128::from)
            .or_else(|| v.value.as_i64().map(i128::from));
        if n.is_none() {
            self.error(
                v.pos,
                format!(
                    "{what} must be an integer from {} to {}, found {}",
                    i64::MIN,
                    u64::MAX,
                    v.value
                ),
            );
            return None;
        }
        Some(n)
    }

    fn expect(&mut self, raw: RawExpect) -> Expect {
        let none_or = |s: Spanned<String>| match s.value.as_str() {
            "none" => None,
            _ => Some(s.value),
        };
        let status = raw.status.and_then(|s| {
            if (100..=599).contains(&s.value) {
                Some(s.value as u16)
            } else {
                self.error(
                    s.pos,
                    format!("status must be between 100 and 599, found {}", s.value),
                );
                None
            }
        });
        let upstream_closed_within = raw
            .upstream_closed_within
            .as_ref()
            .and_then(|d| self.duration(d, "upstream_closed_within"));
        Expect {
            status,
            error: raw.error.map(none_or),
            finish_reason: raw.finish_reason.map(|s| s.value),
            events: raw.events.map(|s| s.value),
            events_contain: raw.events_contain.map(|s| s.value),
            event_counts: raw
                .event_counts
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.value, v.value))
                .collect(),
            text: raw.text.map(|s| s.value),
            refusal: raw.refusal.map(|s| s.value),
            usage: paths(raw.usage),
            headers: raw
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k.value.to_ascii_lowercase(), v.value))
                .collect(),
            body: paths(raw.body),
            ledger: raw.ledger.map(|l| LedgerExpect {
                status: l.status.map(|s| s.value),
                prompt_tokens: l.prompt_tokens.map(|s| s.value),
                completion_tokens: l.completion_tokens.map(|s| s.value),
                estimated: l.estimated.map(|s| s.value),
                error_code: l.error_code.map(none_or),
                cost_within_reservation: l.cost_within_reservation.map(|s| s.value),
            }),
            upstream_closed_within,
            upstream_request: paths(raw.upstream_request),
            upstream_calls: raw.upstream_calls.map(|s| s.value),
            upstream_events_at_most: raw.upstream_events_at_most.map(|s| s.value),
            tool_results_sent: raw.tool_results_sent.map(|s| s.value),
            tool_result_contains: raw.tool_result_contains.map(|s| s.value),
            secret_absent: raw.secret_absent.map(|s| s.value),
        }
    }
}

fn paths(raw: Option<RawPaths>) -> Vec<(String, Value)> {
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.value, v.value))
        .collect()
}

/// The tool a hostile tool-call fault calls (the `support` pipeline's).
fn tool_name(name: &Option<String>) -> String {
    name.clone().unwrap_or_else(|| "lookup_order".to_owned())
}

fn delta_text(d: &super::spec::RawDeltas) -> String {
    d.text.clone().unwrap_or_else(|| " tok".to_owned())
}
