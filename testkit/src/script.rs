//! What the mock answers: [`Script`], [`Reply`], [`Body`] and [`Fault`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::sse;
use crate::timing::Timing;

/// What to answer, per request: the Nth model request (`…/chat/completions`
/// or `…/messages`, one sequence for both) gets `responses[N]`; once the list runs out, the last one repeats.
///
/// Requests that are not served (404, 400) do not consume a slot.
#[derive(Clone, Debug)]
pub struct Script {
    pub responses: Vec<Reply>,
}

impl Script {
    /// A script that answers every request with `reply`.
    pub fn single(reply: Reply) -> Script {
        Script {
            responses: vec![reply],
        }
    }

    /// Appends `reply` as the answer to the next request.
    pub fn then(mut self, reply: Reply) -> Script {
        self.responses.push(reply);
        self
    }

    /// The reply for script slot `slot` (the last one repeats), or `None`
    /// if the script is empty.
    pub fn reply_for(&self, slot: usize) -> Option<&Reply> {
        self.responses.get(slot).or_else(|| self.responses.last())
    }
}

impl From<Reply> for Script {
    fn from(reply: Reply) -> Script {
        Script::single(reply)
    }
}

/// The body of a reply, before faults are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A finite SSE stream. Each element is the exact bytes of one event,
    /// including its terminating blank line (`\n\n` or `\r\n\r\n`).
    Events(Vec<Bytes>),
    /// An endless OpenAI stream: a role chunk, then content chunks carrying
    /// `token` forever (never a `finish_reason`, usage or `[DONE]`).
    Flood { token: String },
    /// An endless Anthropic stream: `message_start`, a text block start and
    /// a `ping`, then `text_delta`s carrying `token` forever (never a
    /// `message_delta` or `message_stop`).
    AnthropicFlood { token: String },
}

/// One scripted answer: a body, its timing (recorded per event, or a
/// uniform pace), a speed factor and a list of faults.
#[derive(Clone, Debug)]
pub struct Reply {
    pub body: Body,
    /// Delay before each event (after the headers) that `timing` does not
    /// cover. Zero means no delay.
    pub pace: Duration,
    /// Recorded timing: a delay before the headers and before each event
    /// (events past its end use `pace`). Set by [`Reply::fixture`] from a
    /// `NAME.timing` sidecar, or by [`Reply::timing`].
    pub timing: Option<Timing>,
    /// Divides every delay of `pace` and `timing` (2.0 plays twice as
    /// fast); fault durations (`DelayHeaders`, `StallAfter`) are not scaled.
    pub speed: f64,
    /// Faults, applied together (see [`Fault`]).
    pub faults: Vec<Fault>,
}

impl Reply {
    /// A recorded SSE body, split into events at blank lines (`\n\n` or
    /// `\r\n\r\n`). A body that ends without the final blank line still
    /// yields its last event, completed with a blank line when written.
    /// Everything else is kept byte for byte.
    pub fn recorded(bytes: impl Into<Bytes>) -> Reply {
        Reply::from_body(Body::Events(sse::split_events(&bytes.into())))
    }

    /// Loads `fixtures/recorded/<name>` (e.g. `"openai/text_stop.sse"`) from
    /// the workspace root, with its `<name>.timing` sidecar when there is
    /// one. Test-only helper: panics if the file is missing or its timing
    /// is invalid (see [`Reply::recording`] for a checked load).
    pub fn fixture(name: &str) -> Reply {
        let path = fixtures_dir().join(name);
        let mut reply = match std::fs::read(&path) {
            Ok(bytes) => Reply::recorded(bytes),
            Err(e) => panic!(
                "sluice-testkit: cannot read fixture {name:?} at {}: {e} \
                 (fixtures live in <workspace>/fixtures/recorded/)",
                path.display()
            ),
        };
        let sidecar = Timing::sidecar_path(&path);
        if let Ok(text) = std::fs::read_to_string(&sidecar) {
            match Timing::parse(&text) {
                Ok(t) => reply.timing = Some(t),
                Err(e) => panic!(
                    "sluice-testkit: {}:{}: {}",
                    sidecar.display(),
                    e.line,
                    e.message
                ),
            }
        }
        reply
    }

    /// A synthesized OpenAI stream: a role chunk, one content chunk per
    /// word, a `finish_reason: "stop"` chunk, a usage chunk (prompt 10,
    /// completion `words.len()`), then `data: [DONE]`.
    pub fn text(words: &[&str]) -> Reply {
        Reply::from_body(Body::Events(sse::synth_text(words)))
    }

    /// An endless stream of content chunks carrying `token`; it ignores
    /// `max_tokens` and never finishes. With zero pace the mock yields to
    /// the runtime between events.
    pub fn flood(token: &str) -> Reply {
        Reply::from_body(Body::Flood {
            token: token.to_owned(),
        })
    }

    /// A synthesized Anthropic Messages stream: `message_start` (input 10
    /// tokens), a text `content_block_start`, `ping`, one `text_delta` per
    /// word, `content_block_stop`, `message_delta` (`end_turn`, cumulative
    /// `output_tokens` = `words.len()`), `message_stop`.
    pub fn anthropic_text(words: &[&str]) -> Reply {
        Reply::from_body(Body::Events(crate::anthropic::synth_text(words)))
    }

    /// Like [`Reply::flood`], on the Anthropic wire (see [`Body::AnthropicFlood`]).
    pub fn anthropic_flood(token: &str) -> Reply {
        Reply::from_body(Body::AnthropicFlood {
            token: token.to_owned(),
        })
    }

    /// Sets a uniform delay before each event, replacing any recorded
    /// per-event timing (the recorded delay before the headers stays).
    pub fn pace(mut self, d: Duration) -> Reply {
        self.pace = d;
        if let Some(t) = &mut self.timing {
            t.events.clear();
        }
        self
    }

    /// Sets per-event timing (see [`Timing`]), e.g. from a recording.
    pub fn timing(mut self, t: Timing) -> Reply {
        self.timing = Some(t);
        self
    }

    /// Plays every recorded or paced delay `factor` times faster (`2.0`
    /// halves them, `0.5` doubles them). Panics unless `factor` is finite
    /// and above zero.
    pub fn speed(mut self, factor: f64) -> Reply {
        assert!(
            factor.is_finite() && factor > 0.0,
            "sluice-testkit: speed must be a finite number above zero, found {factor}"
        );
        self.speed = factor;
        self
    }

    /// The delay before the headers from recorded timing, after `speed`.
    pub fn headers_delay(&self) -> Duration {
        let d = self.timing.as_ref().map_or(Duration::ZERO, |t| t.headers);
        crate::timing::scale(d, self.speed)
    }

    /// The delay before event `i` of the body (0-based, counted in the body
    /// as scripted, before faults remove any), after `speed`.
    pub fn event_delay(&self, i: usize) -> Duration {
        let d = self
            .timing
            .as_ref()
            .and_then(|t| t.events.get(i).copied())
            .unwrap_or(self.pace);
        crate::timing::scale(d, self.speed)
    }

    /// Adds a fault.
    pub fn fault(mut self, f: Fault) -> Reply {
        self.faults.push(f);
        self
    }

    pub(crate) fn from_body(body: Body) -> Reply {
        Reply {
            body,
            pace: Duration::ZERO,
            timing: None,
            speed: 1.0,
            faults: Vec::new(),
        }
    }
}

/// `<workspace>/fixtures/recorded`.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join("recorded")
}

/// A fault injected into a reply. Faults compose; event counts refer to
/// the events actually sent (after `Truncate`/`OmitUsage` removed some).
/// At one event count, faults act in list order (a stall then a disconnect).
///
/// A non-streaming request (`"stream": false`) only sees `Status`,
/// `DelayHeaders`, `Truncate`, `OmitUsage`, `ConnectionClose`,
/// `CloseIdleAfter`, `EchoKeyStatus` and `SlowDrip`.
///
/// The faults that replace the body (`HugeToolArguments`,
/// `EndlessToolArguments`, `ManyToolCalls`) or rewrite its events
/// (`TextAfterFinish`, `Reasoning`, `Refusal`) send at the reply's `pace`
/// (recorded per-event timing does not apply to the events they make).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status, a provider-shaped JSON error body and
    /// optionally `Retry-After: secs`, instead of the body. The shape follows
    /// the path: OpenAI's `{"error":{"message","type","param","code"}}` on
    /// `…/chat/completions`, Anthropic's
    /// `{"type":"error","error":{"type","message"}}` on `…/messages` (529 is
    /// `overloaded_error`, 429 `rate_limit_error`, other 5xx `api_error`).
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Wait before sending the response headers (several add up).
    DelayHeaders(Duration),
    /// After `events` events, go silent: for `Some(d)` for `d` and then
    /// continue, for `None` until the client closes. `events` equal to the
    /// number of events stalls before the terminating chunk.
    StallAfter {
        events: usize,
        duration: Option<Duration>,
    },
    /// After `events` events, go silent until the test opens `gate`, then
    /// go on: holds a stream at a point of the test's choosing (e.g. until
    /// a client has shown what it received so far). It waits on no clock:
    /// under a paused one, time may jump to the client's deadlines meanwhile.
    HoldAfter { events: usize, gate: crate::Gate },
    /// After `events` events, close the connection (without the terminating
    /// chunk): a clean FIN, or with `reset: true` a TCP RST (`SO_LINGER` 0).
    DisconnectAfter { events: usize, reset: bool },
    /// Replace event N (0-based) with garbage: `data: {not json\n\n`.
    MalformedAt(usize),
    /// Remove every event whose data is `[DONE]` or whose JSON has a
    /// non-null top-level `usage`; the body then ends normally. On the
    /// Anthropic wire: remove `message_stop`, and strip the `usage` of
    /// `message_delta` (keeping its stop reason).
    Truncate,
    /// Remove usage only, keeping `[DONE]`: a usage-only chunk (`choices: []`)
    /// is dropped, any other event (e.g. Anthropic's `message_delta`) loses
    /// its top-level `usage` key.
    OmitUsage,
    /// Write each event in pieces of at most N bytes, each its own HTTP
    /// chunk, so splits fall mid-line and mid-UTF-8. 0 is treated as 1.
    Fragment(usize),
    /// After `N` events, send the provider's in-stream error event and end
    /// the body there (no `message_stop` or `[DONE]`): on `…/messages`
    /// `event: error` with an `overloaded_error`, on `…/chat/completions`
    /// `data: {"error": {...}}`.
    ErrorEventAfter(usize),
    /// Answer with `Connection: close` and close the connection after the
    /// reply, as a server that does not keep connections alive does.
    ConnectionClose,
    /// After the reply, keep the connection open for the next request (no
    /// `Connection: close`), but close it (FIN) if that request has not
    /// started to arrive within this time, as servers with a keep-alive idle
    /// timeout do. Zero closes it right after the reply. Tests use it to
    /// close a connection the client keeps idle in its pool; the journal
    /// then counts the close as the mock's (see [`crate::Journal::wait_closed`]).
    CloseIdleAfter(Duration),
    /// Replaces the body with one tool call (name `name`) whose arguments
    /// are exactly `bytes` bytes of JSON text (`{"pad":"xxx…"}`; fewer than
    /// 10 bytes are spaces), streamed in fragments of `fragment` bytes, then
    /// the tool-call finish, usage and the terminator.
    HugeToolArguments {
        name: String,
        bytes: usize,
        fragment: usize,
    },
    /// Replaces the body with one tool call whose argument fragments (each
    /// `fragment` bytes of `x` inside an unterminated JSON string) never
    /// end: no finish, no usage, no terminator, whatever `max_tokens` says.
    EndlessToolArguments { name: String, fragment: usize },
    /// Replaces the body with `count` tool calls, each at its own index
    /// (OpenAI `tool_calls[].index`, Anthropic content block), each named
    /// `name` with arguments `{}`, then the finish, usage and terminator.
    ManyToolCalls { name: String, count: usize },
    /// Replaces the token counts the stream reports, wherever it reports
    /// them: OpenAI `usage.prompt_tokens` / `completion_tokens` (and
    /// `total_tokens`, their sum, capped to u64); Anthropic
    /// `message_start.message.usage.input_tokens` / `output_tokens` and
    /// `message_delta.usage.output_tokens`. `None` keeps the reported one.
    /// Values may be anything from `i64::MIN` to `u64::MAX`.
    AbsurdUsage {
        prompt: Option<i128>,
        completion: Option<i128>,
    },
    /// Answer with this HTTP status and an error body that quotes the
    /// request's API key header as sent (`Authorization` on
    /// `…/chat/completions`, `x-api-key` on `…/messages`), as a provider or
    /// proxy that echoes credentials does.
    EchoKeyStatus(u16),
    /// After N events, an in-stream error event whose message quotes the
    /// API key header, then the body ends (as `ErrorEventAfter`).
    EchoKeyEventAfter(usize),
    /// The model the stream names is the API key header's value as
    /// received: OpenAI's `model` on every chunk, Anthropic's
    /// `message_start.message.model`, as a provider or proxy that echoes
    /// credentials in the answer's metadata does.
    EchoKeyModel,
    /// After the finish reason and usage, keep sending text deltas
    /// carrying `text`: `count` of them and then the terminator (`[DONE]`,
    /// `message_stop`), or with `None` forever and never the terminator.
    TextAfterFinish { text: String, count: Option<usize> },
    /// Writes the response head one byte per `head` interval and the body
    /// (chunk framing included) one byte per `body` interval; zero writes
    /// that part at once.
    SlowDrip { head: Duration, body: Duration },
    /// Before the content, `count` reasoning deltas carrying `text`: OpenAI
    /// `delta.reasoning_content` chunks, Anthropic a `thinking` block of
    /// `thinking_delta`s (later blocks' indexes move up by one).
    Reasoning { text: String, count: usize },
    /// Before the content, `count` OpenAI `delta.refusal` chunks carrying
    /// `text` (Anthropic has no refusal delta: a text block is used).
    Refusal { text: String, count: usize },
}
