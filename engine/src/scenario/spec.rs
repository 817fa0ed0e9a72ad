//! Raw scenario shapes, exactly as written in a scenario file.
//!
//! Parsed with the configuration's positioned YAML tree
//! ([`crate::config::node`]), so unknown keys are reported with
//! `file:line:col` and a suggestion, like in pipeline files. Nothing here is
//! checked beyond its shape; [`super::build`] does the rest.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::Spanned;

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// Shown in reports.
    pub description: Option<String>,
    /// The pipeline to call (its `name`, which is also its route).
    pub pipeline: Spanned<String>,
    /// The route the client calls: `pipeline` (default:
    /// `/v1/pipelines/{pipeline}`, Sluice's named events),
    /// `chat_completions` (`/v1/chat/completions`, OpenAI's chunks) or
    /// `messages` (`/v1/messages`, Anthropic's events). See
    /// [`super::api`] for what `events`, `text`, `finish_reason`, `error`
    /// and `usage` mean for each.
    pub api: Option<Spanned<String>>,
    /// The pipelines directory, relative to this file (default: the
    /// runner's `--pipelines`, `pipelines/`).
    pub pipelines: Option<Spanned<String>>,
    /// Where `fixture:` paths are looked up, relative to this file
    /// (default: the runner's `--recordings`, `fixtures/recorded/`).
    pub recordings: Option<Spanned<String>>,
    /// `openai` or `anthropic`: the wire the mock speaks when the pipeline's
    /// provider is a replay provider (default: from the fixtures' paths).
    pub wire: Option<Spanned<String>>,
    /// `virtual` (default: tokio's paused clock) or `real`.
    pub clock: Option<Spanned<String>>,
    /// The longest the scenario may take on its clock (default 10m).
    pub limit: Option<Spanned<String>>,
    /// The JSON body of `api`'s request, sent as written except that the
    /// client APIs get `model: {pipeline}` when it is absent.
    pub request: Spanned<Value>,
    /// How the client behaves.
    pub client: Option<RawClient>,
    /// One upstream reply per model call, in order; the last one repeats.
    pub turns: Spanned<Vec<Spanned<RawTurn>>>,
    pub expect: RawExpect,
}

/// The client's behaviour beyond sending the request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// Close the connection this long after sending the request.
    pub disconnect_after: Option<Spanned<String>>,
    /// Close the connection after receiving this many SSE events.
    pub disconnect_after_events: Option<Spanned<u64>>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// One upstream reply: exactly one body (`fixture`, `text` or `flood`),
/// its timing and its faults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTurn {
    /// A recorded stream under the recordings directory, played with its
    /// `.timing` sidecar when there is one.
    pub fixture: Option<Spanned<String>>,
    /// A synthesized stream: one delta per item.
    pub text: Option<Spanned<Vec<String>>>,
    /// An endless stream of this token that ignores `max_tokens`.
    pub flood: Option<Spanned<String>>,
    /// A synthesized stream in which the model calls one tool.
    pub tool_call: Option<Spanned<RawToolCall>>,
    /// A synthesized stream in which the model declines, one piece per
    /// item: OpenAI `delta.refusal`s (finish `stop`); on Anthropic a text
    /// block with `stop_reason: refusal`.
    pub refusal: Option<Spanned<Vec<String>>>,
    /// A uniform delay before each event (replaces recorded timing).
    pub pace: Option<Spanned<String>>,
    /// Plays every recorded or paced delay this many times faster.
    pub speed: Option<Spanned<f64>>,
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
}

/// `tool_call: {name: lookup_order, arguments: {order_id: 7}, id: call_1}`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToolCall {
    pub name: Spanned<String>,
    /// The arguments, as a mapping (sent as JSON text).
    #[serde(default)]
    pub arguments: Option<Spanned<Value>>,
    /// The call id (default `call_1` / `toolu_1`).
    pub id: Option<Spanned<String>>,
    /// `true`: the provider reaches `max_tokens` inside the arguments:
    /// only their first two of three pieces are sent, then finish `length`
    /// (Anthropic `stop_reason: max_tokens`).
    #[serde(default)]
    pub cut: bool,
}

/// A fault, written as `- name: value` (or `- name` when it takes none).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFault {
    /// `status: {code: 429, retry_after: 7}`
    Status(RawStatus),
    /// `delay_headers: 12s`
    DelayHeaders(Spanned<String>),
    /// `stall_after: {events: 5, for: 60s}` (`for` omitted or `forever`:
    /// until the client closes)
    StallAfter(RawStall),
    /// `disconnect_after: {events: 5, reset: true}`
    DisconnectAfter(RawDisconnect),
    /// `malformed_at: 3`
    MalformedAt(Spanned<u64>),
    /// `truncate`
    Truncate,
    /// `omit_usage`
    OmitUsage,
    /// `fragment: 7`
    Fragment(Spanned<u64>),
    /// `error_event_after: 4`
    ErrorEventAfter(Spanned<u64>),
    /// `huge_tool_arguments: {bytes: 400000, fragment: 1000, name: lookup_order}`
    HugeToolArguments(RawHugeArgs),
    /// `endless_tool_arguments: {fragment: 100, name: lookup_order}`
    EndlessToolArguments(RawEndlessArgs),
    /// `many_tool_calls: {count: 1000, name: lookup_order}`
    ManyToolCalls(RawManyCalls),
    /// `absurd_usage: {prompt: -5, completion: 18446744073709551615}`
    AbsurdUsage(RawUsage),
    /// `echo_key_status: 401`
    EchoKeyStatus(Spanned<u64>),
    /// `echo_key_event_after: 3`
    EchoKeyEventAfter(Spanned<u64>),
    /// `echo_key_model`
    EchoKeyModel,
    /// `text_after_finish: {text: " more", count: 5}` (`count` omitted: forever)
    TextAfterFinish(RawDeltas),
    /// `slow_drip: {head: 1s, body: 10ms}`
    SlowDrip(RawDrip),
    /// `reasoning: {text: hmm, count: 5}`
    Reasoning(RawDeltas),
    /// `refusal: {text: no, count: 5}` (OpenAI's `delta.refusal`)
    Refusal(RawDeltas),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHugeArgs {
    pub bytes: Spanned<u64>,
    pub fragment: Spanned<u64>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndlessArgs {
    pub fragment: Spanned<u64>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManyCalls {
    pub count: Spanned<u64>,
    pub name: Option<String>,
}

/// Token counts as integers from `i64::MIN` to `u64::MAX`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUsage {
    pub prompt: Option<Spanned<Value>>,
    pub completion: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeltas {
    pub text: Option<String>,
    pub count: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrip {
    pub head: Option<Spanned<String>>,
    pub body: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    pub code: Spanned<u64>,
    pub retry_after: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStall {
    pub events: Spanned<u64>,
    #[serde(rename = "for")]
    pub duration: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDisconnect {
    pub events: Spanned<u64>,
    #[serde(default)]
    pub reset: bool,
}

/// A map from dotted paths (`stream_options.include_usage`) to JSON values.
pub type RawPaths = BTreeMap<Spanned<String>, Spanned<Value>>;

/// The expected outcome; every key is optional and only the given ones
/// are checked. The event-reading ones (`error`, `finish_reason`,
/// `events`, `events_contain`, `event_counts`, `text`, `refusal`, `usage`)
/// read the scenario's `api` as [`super::api`] describes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    /// The HTTP status of the response.
    pub status: Option<Spanned<u64>>,
    /// The error code: of the SSE `error` event, or `error.code` of a JSON
    /// error body; `none` for no error.
    pub error: Option<Spanned<String>>,
    /// `finish_reason` of `done` (or of a `stream: false` body).
    pub finish_reason: Option<Spanned<String>>,
    /// The SSE event names, exactly and in order.
    pub events: Option<Spanned<Vec<String>>>,
    /// Event names that must each appear at least once.
    pub events_contain: Option<Spanned<Vec<String>>>,
    /// How many events of each name, e.g. `{delta: 20}`.
    pub event_counts: Option<BTreeMap<Spanned<String>, Spanned<u64>>>,
    /// The concatenated `delta` texts (or the `output` of a JSON body).
    pub text: Option<Spanned<String>>,
    /// The concatenated refusal texts (`refusal` events, Chat Completions
    /// `delta.refusal`s); not for `api: messages`.
    pub refusal: Option<Spanned<String>>,
    /// Fields of the `usage` event (or of a JSON body's `usage`).
    pub usage: Option<RawPaths>,
    /// Response headers (names case-insensitive).
    pub headers: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Fields of a JSON response body, by dotted path.
    pub body: Option<RawPaths>,
    /// The request's ledger row.
    pub ledger: Option<RawLedger>,
    /// The mock saw Sluice close the upstream connection within this bound
    /// after the deadline that ended the request (or after the client left,
    /// or after Sluice reported the ending).
    pub upstream_closed_within: Option<Spanned<String>>,
    /// Fields of the (last) request body Sluice sent upstream.
    pub upstream_request: Option<RawPaths>,
    /// How many model calls reached the mock.
    pub upstream_calls: Option<Spanned<u64>>,
    /// The mock wrote at most this many events before the connection closed.
    pub upstream_events_at_most: Option<Spanned<u64>>,
    /// How many tool results the last model call carried back to the model.
    pub tool_results_sent: Option<Spanned<u64>>,
    /// Text that one of those tool results contains.
    pub tool_result_contains: Option<Spanned<String>>,
    /// `true`: the API key the mock was called with appears nowhere in the
    /// response (status body, headers, events) or the ledger row.
    pub secret_absent: Option<Spanned<bool>>,
}

/// The expected ledger row; only the given fields are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub status: Option<Spanned<String>>,
    pub prompt_tokens: Option<Spanned<i64>>,
    pub completion_tokens: Option<Spanned<i64>>,
    pub estimated: Option<Spanned<bool>>,
    /// `none` for no error code.
    pub error_code: Option<Spanned<String>>,
    /// `true`: the settled cost is between 0 and the reservation.
    pub cost_within_reservation: Option<Spanned<bool>>,
}
