//! The provider seam: a provider turns one [`ProviderRequest`] into a stream of
//! typed [`Chunk`]s. The engine only sees this seam, so the OpenAI-compatible
//! client, the replay provider and test doubles are interchangeable.

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde::Serialize;

pub mod anthropic;
pub mod anthropic_wire;
mod h1;
pub mod http;
pub mod openai;
pub mod openai_wire;
mod pool;
pub mod replay;
pub mod secrets;
pub mod sse;

/// The HTTP/1.1 client's parsers, for the fuzz tests only.
#[doc(hidden)]
pub use h1::fuzzing;

/// One message of the conversation, in the provider-neutral shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// An assistant turn that asked for tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message answers this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, fed back to the model.
    Tool,
}

/// A complete tool call, as the model asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments exactly as the model wrote them (JSON text, maybe invalid).
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

/// What the engine asks of a provider for one model call.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    /// Already clamped to the pipeline's ceiling.
    pub max_tokens: u32,
    /// Bound on establishing the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Tools the model may call (none: the provider is not told of tools).
    pub tools: std::sync::Arc<[ToolSpec]>,
}

/// Token usage exactly as the provider reported it: any JSON integer,
/// negative or past `u64::MAX` included up to i128, so that an impossible
/// figure is recorded as sent and checked (`run::usage_check`) rather than
/// failing the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: i128,
    pub completion_tokens: i128,
}

/// Why the provider says the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
    Other(String),
}

impl FinishReason {
    pub fn from_openai(s: &str) -> Self {
        match s {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
            Self::Other(s) => s,
        }
    }
}

/// One typed piece of an upstream stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// Generated text. Never empty.
    Delta(String),
    /// The model's visible reasoning (OpenAI-compatible `reasoning_content`
    /// or `reasoning`, Anthropic `thinking` blocks). Never empty. Counted
    /// as generated tokens; not part of the answer.
    Reasoning(String),
    /// The model declined to answer, in its own words (OpenAI's
    /// `delta.refusal`). Never empty.
    Refusal(String),
    /// A fragment of a tool call, assembled by `index` (OpenAI) or block (Anthropic).
    ToolCallDelta {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    /// The model stopped; more chunks (usage) may follow.
    Finish(FinishReason),
    /// Usage for the whole call, as reported by the provider.
    Usage(Usage),
    /// The provider's end-of-stream marker (`[DONE]`, `message_stop`).
    End,
}

/// Where a provider failure came from, for logs and for retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The provider answered with an error or sent something we cannot use.
    Upstream,
    /// The network between us and the provider.
    Network,
    /// Our own fault (bad configuration, a bug).
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    #[error("cannot connect to provider: {0}")]
    Connect(String),
    #[error("connecting to provider took longer than {0:?}")]
    ConnectTimeout(Duration),
    #[error("provider answered HTTP {status}: {message}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        /// A short, redacted summary of the provider's error body.
        message: String,
    },
    #[error("provider sent an error in the stream: {0}")]
    InStream(String),
    #[error("provider sent malformed data: {0}")]
    Malformed(String),
    #[error("provider connection failed: {0}")]
    Io(String),
    #[error("provider stream ended before it was complete")]
    Truncated,
    #[error("provider misconfigured: {0}")]
    Config(String),
}

impl ProviderError {
    pub fn source_kind(&self) -> ErrorSource {
        match self {
            Self::Connect(_) | Self::ConnectTimeout(_) | Self::Io(_) => ErrorSource::Network,
            Self::Status { .. } | Self::InStream(_) | Self::Malformed(_) | Self::Truncated => {
                ErrorSource::Upstream
            }
            Self::Config(_) => ErrorSource::Internal,
        }
    }

    /// The error with every secret of `secrets` (and echo of one) scrubbed
    /// from its text. `http.rs` applies it to every error built from what a
    /// provider sent, so no later use (rejections, logs, the ledger) can
    /// see a secret the provider echoed.
    pub fn scrubbed(self, secrets: &secrets::Secrets) -> Self {
        let scrub = |s: String| match secrets.scrub(&s) {
            std::borrow::Cow::Borrowed(_) => s,
            std::borrow::Cow::Owned(clean) => clean,
        };
        match self {
            Self::Connect(m) => Self::Connect(scrub(m)),
            Self::Status {
                status,
                retry_after,
                message,
            } => Self::Status {
                status,
                retry_after,
                message: scrub(message),
            },
            Self::InStream(m) => Self::InStream(scrub(m)),
            Self::Malformed(m) => Self::Malformed(scrub(m)),
            Self::Io(m) => Self::Io(scrub(m)),
            Self::Config(m) => Self::Config(scrub(m)),
            Self::ConnectTimeout(d) => Self::ConnectTimeout(d),
            Self::Truncated => Self::Truncated,
        }
    }

    /// Whether trying the same call again may help (before the first byte).
    pub fn retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::ConnectTimeout(_) | Self::Io(_) | Self::Truncated => true,
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::InStream(_) | Self::Malformed(_) | Self::Config(_) => false,
        }
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

/// A model provider. `call` resolves once the provider has accepted the
/// request (response headers received); dropping the returned stream must
/// close the upstream connection at once.
pub trait Provider: Send + Sync {
    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>>;
}
