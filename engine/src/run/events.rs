//! What a run tells the client and the ledger: events, error codes,
//! usage, rejections and final statuses.

use std::time::Duration;

use serde::Serialize;

use super::channel::EventReceiver;
use crate::provider::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    #[serde(rename = "timeout.connect")]
    TimeoutConnect,
    #[serde(rename = "timeout.first_token")]
    TimeoutFirstToken,
    #[serde(rename = "timeout.idle")]
    TimeoutIdle,
    #[serde(rename = "timeout.total")]
    TimeoutTotal,
    #[serde(rename = "upstream")]
    Upstream,
    #[serde(rename = "upstream_rate_limited")]
    UpstreamRateLimited,
    #[serde(rename = "token_ceiling")]
    TokenCeiling,
    #[serde(rename = "budget_exhausted")]
    BudgetExhausted,
    /// A rate limit of the pipeline, the key or its team.
    #[serde(rename = "rate_limited")]
    RateLimited,
    #[serde(rename = "shutdown")]
    Shutdown,
    #[serde(rename = "internal")]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimeoutConnect => "timeout.connect",
            Self::TimeoutFirstToken => "timeout.first_token",
            Self::TimeoutIdle => "timeout.idle",
            Self::TimeoutTotal => "timeout.total",
            Self::Upstream => "upstream",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::TokenCeiling => "token_ceiling",
            Self::BudgetExhausted => "budget_exhausted",
            Self::RateLimited => "rate_limited",
            Self::Shutdown => "shutdown",
            Self::Internal => "internal",
        }
    }

    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Self::TimeoutConnect | Self::TimeoutFirstToken | Self::TimeoutIdle | Self::TimeoutTotal
        )
    }
}

/// Token usage as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// True when counted by Sluice's tokenizer because the provider gave none.
    pub estimated: bool,
    /// Whose count the tokens are: the provider's usage, Sluice's own
    /// (o200k, for a stream cut or left without usage), or both (rounds of
    /// a tool loop that differ).
    pub counted_by: CountedBy,
    /// What the call cost, in integer micro-dollars (0 without a price).
    pub cost_micros: i64,
    /// The same as a decimal string of dollars, e.g. "0.000021".
    pub cost_usd: String,
    /// Of `prompt_tokens`, those the provider read from its prompt cache
    /// and those it wrote to it, as it reported them (0 when it did not).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_tokens: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_tokens: u64,
    /// Of `cache_write_tokens`, those written for an hour (priced at
    /// `cache_write_1h`).
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_1h_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whose count a usage report holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CountedBy {
    #[serde(rename = "provider")]
    Provider,
    /// Sluice's own tokenizer (o200k).
    #[serde(rename = "sluice:o200k")]
    Sluice,
    #[serde(rename = "provider+sluice:o200k")]
    Both,
}

/// One thing to tell the client.
///
/// Kept to 32 bytes (the rare, larger events are boxed): every open
/// stream's channel may hold 16 of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start(Box<StartEvent>),
    Delta(String),
    /// The model declined, in its own words (streamed like text).
    Refusal(String),
    /// The model's visible reasoning, as it arrives (not part of the
    /// answer; the Messages API relays it as `thinking` blocks).
    Reasoning(String),
    /// The provider's signature of the reasoning just relayed; it closes
    /// that piece of reasoning (Anthropic's `signature_delta`).
    ReasoningSignature(String),
    /// Reasoning the provider sent encrypted, whole.
    RedactedReasoning(String),
    /// A fragment of a tool call that goes back to the client (a tool the
    /// client brought, or any tool of a pipeline that runs none), relayed
    /// as it arrives. The complete call follows as [`Event::ToolCall`].
    ToolCallDelta(Box<ToolCallDelta>),
    /// The client's call of this index has all its arguments: the
    /// provider said so (Anthropic ends its block). Only the Messages
    /// encoder uses it, to end the call's block before what follows.
    ToolCallEnd(u32),
    ToolCall(Box<ToolCallEvent>),
    ToolResult(Box<ToolResultEvent>),
    Usage(Box<UsageReport>),
    Error {
        code: ErrorCode,
        message: String,
        /// The provider's own kind of error, when it named one of
        /// Anthropic's (the Messages API shows it).
        kind: Option<ErrorKind>,
    },
    /// The answer stopped on this one of the request's stop sequences
    /// (sent just before `Done`, whose reason is `stop`, when the provider
    /// says which matched). Only the Messages API names it.
    StopSequence(String),
    Done {
        finish_reason: String,
    },
    /// Nothing happened for a while; keeps proxies from closing the stream.
    KeepAlive,
    /// The events that follow, up to the next `Choice`, belong to this
    /// choice of a request that asked for several (`n`). Every stream
    /// starts with choice 0 and one-choice streams never carry it, so only
    /// the Chat Completions API, the one where `n` exists, meets it.
    Choice(u32),
    /// One choice (of several) finished, with this reason. With one
    /// choice the reason comes with `Done` alone.
    ChoiceDone {
        choice: u32,
        finish_reason: String,
    },
    /// The provider's log probabilities of the tokens of the next
    /// `Delta` or `Refusal` of this choice (its `logprobs` object,
    /// opaque), when the client asked for them.
    Logprobs(Box<serde_json::Value>),
}

/// The stream has started: who answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartEvent {
    pub request_id: String,
    pub pipeline: String,
    pub provider: String,
    pub model: String,
    /// Set when the budget could not afford the pipeline's own model
    /// and a cheaper one answers instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downgraded_from: Option<String>,
    /// Sluice's count of the first call's prompt (o200k), for APIs that
    /// announce input tokens when the answer starts; the provider's own
    /// count comes with the usage.
    #[serde(skip)]
    pub prompt_tokens: u64,
}

/// The model asked for a tool; `arguments` is its JSON (or, when it
/// wrote invalid JSON, its text as a string).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallEvent {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
    pub round: u32,
    /// Who runs it: `sluice` (a pipeline tool, its result follows) or
    /// `client` (the answer ends with `tool_calls`; the client runs it).
    pub runs: &'static str,
}

/// A piece of a tool call for the client. `index` numbers the client's
/// calls of the answer from 0; `id` and `name` come with the first piece.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

/// What the tool answered (rows count, or the error sent to the model).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolResultEvent {
    pub id: String,
    pub name: String,
    pub ok: bool,
    pub rows: usize,
    pub truncated: bool,
    pub error: Option<String>,
}

/// A failure before anything was sent to the client.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    /// The provider's HTTP status, when it answered with one.
    pub upstream_status: Option<u16>,
    pub retry_after: Option<Duration>,
    /// More fields for the error body (e.g. which budget).
    pub details: Option<serde_json::Value>,
    /// The rate limit that refused it, for the `x-ratelimit-*` headers.
    pub rate_limit: Option<RateRefusal>,
    /// The provider's own kind of error, when it named one of Anthropic's.
    pub upstream_kind: Option<ErrorKind>,
}

/// A rate limit that refused a request: which kind, and how it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateRefusal {
    /// `requests` or `tokens`.
    pub kind: &'static str,
    pub standing: crate::ledger::rate::Standing,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
            upstream_status: None,
            retry_after: None,
            details: None,
            rate_limit: None,
            upstream_kind: None,
        }
    }
}

/// The outcome of the first phase of a request.
#[derive(Debug)]
pub enum Admission {
    Streaming(EventReceiver),
    Rejected(Rejection),
}

/// How a request ended: the ledger row's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Timeout,
    ClientClosed,
    UpstreamError,
    Ceiling,
    Interrupted,
    BudgetRejected,
    RateLimited,
    Internal,
}

impl Status {
    /// The status of a request that ended with this error.
    pub fn for_error(code: ErrorCode) -> Status {
        match code {
            c if c.is_timeout() => Status::Timeout,
            ErrorCode::TokenCeiling => Status::Ceiling,
            ErrorCode::Shutdown => Status::Interrupted,
            ErrorCode::Internal => Status::Internal,
            ErrorCode::BudgetExhausted => Status::BudgetRejected,
            ErrorCode::RateLimited => Status::RateLimited,
            _ => Status::UpstreamError,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::ClientClosed => "client_closed",
            Self::UpstreamError => "upstream_error",
            Self::Ceiling => "ceiling",
            Self::Interrupted => "interrupted",
            Self::BudgetRejected => "budget_rejected",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_event_fits_a_small_channel_slot() {
        assert!(std::mem::size_of::<super::Event>() <= 32);
    }
}
