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
    /// What the message says, in order: text, images, and (in an
    /// assistant turn handed back to the provider) earlier reasoning.
    pub content: Vec<Part>,
    /// An assistant turn that asked for tools.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` message answers this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message that reports a failure (Anthropic's `is_error`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
    /// Anthropic prompt-caching breakpoints, as the client placed them:
    /// (block, its `cache_control` object). Blocks are numbered as the
    /// Anthropic wire sends the message: its parts in order, then its tool
    /// calls; a `tool` message is one block (its `tool_result`). Only the
    /// Anthropic wire can send them ([`Params::cache_control`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cache_control: Vec<(u32, serde_json::Value)>,
}

impl Message {
    /// A message of plain text (no part when the text is empty).
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        let text: String = content.into();
        Message {
            role,
            content: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Text(text)]
            },
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
            cache_control: Vec::new(),
        }
    }

    /// The text parts, joined.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        let mut texts = self.content.iter().filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        });
        let Some(first) = texts.next() else {
            return std::borrow::Cow::Borrowed("");
        };
        match texts.next() {
            None => std::borrow::Cow::Borrowed(first),
            Some(second) => {
                let mut all = String::from(first);
                all.push_str(second);
                texts.for_each(|t| all.push_str(t));
                std::borrow::Cow::Owned(all)
            }
        }
    }

    /// Whether any part is not text.
    pub fn has_images(&self) -> bool {
        self.content.iter().any(|p| matches!(p, Part::Image { .. }))
    }
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Text(String),
    Image {
        image: Image,
        /// OpenAI's `image_url.detail`, when the client set it.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<ImageDetail>,
    },
    /// Reasoning from an earlier assistant turn, with the provider's
    /// signature (Anthropic asks for it back when thinking meets tools).
    Thinking {
        text: String,
        signature: String,
    },
    /// Reasoning the provider sent encrypted (Anthropic `redacted_thinking`).
    RedactedThinking(String),
}

/// An image given to the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Image {
    /// Fetched by the provider.
    Url(String),
    /// Inline: the media type and base64 data (what a `data:` URL holds).
    Base64 { media_type: String, data: String },
}

/// How closely the model should look at an image (OpenAI's
/// `image_url.detail`). A hint: the Anthropic Messages API has no
/// equivalent, and its wire leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageDetail {
    Auto,
    Low,
    High,
}

impl ImageDetail {
    /// `"auto"`, `"low"` or `"high"`; None for any other value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "low" => Some(Self::Low),
            "high" => Some(Self::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Low => "low",
            Self::High => "high",
        }
    }
}

impl Image {
    /// An OpenAI `image_url.url`: a `data:<type>;base64,<data>` URL is
    /// taken apart, any other is a URL.
    pub fn from_url(url: &str) -> Image {
        if let Some(rest) = url.strip_prefix("data:")
            && let Some((media_type, data)) = rest.split_once(";base64,")
        {
            return Image::Base64 {
                media_type: media_type.to_string(),
                data: data.to_string(),
            };
        }
        Image::Url(url.to_string())
    }

    /// The same as a URL (`data:` for inline images).
    pub fn to_url(&self) -> String {
        match self {
            Image::Url(u) => u.clone(),
            Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
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

/// A tool offered to the model: one of the pipeline's (run by Sluice) or
/// one the client brought (its calls go back to the client).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
    /// OpenAI's `strict` (schema-exact arguments), when the client set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Anthropic's prompt-caching breakpoint on this tool, as the client
    /// sent it (see [`Params::cache_control`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<serde_json::Value>,
}

/// Which tool the model must call, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool (OpenAI `required`, Anthropic `any`).
    Required,
    /// This tool.
    Tool(String),
}

/// The shape the answer must take.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        name: String,
        description: Option<String>,
        schema: serde_json::Value,
        strict: Option<bool>,
    },
}

/// What a client (or the pipeline) set about how the model samples and
/// answers, in one provider-neutral shape: each provider's wire sends
/// what its API has, and [`Params::unsupported_by`] names what it lacks
/// so that a request is refused instead of silently changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u32>,
    pub stop: Vec<String>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) to bias, as OpenAI takes it.
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    /// The end user, for the provider's abuse monitoring (Anthropic's
    /// `metadata.user_id`).
    pub user: Option<String>,
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    /// How many answers (choices) to generate for the one prompt; None is
    /// one. Only the OpenAI wire has it.
    pub n: Option<u32>,
    pub response_format: Option<ResponseFormat>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    /// Anthropic's extended thinking settings, passed through as sent.
    pub thinking: Option<serde_json::Value>,
    /// The messages or tools carry Anthropic prompt-caching breakpoints
    /// (`cache_control`), which only the Anthropic wire can send.
    pub cache_control: bool,
    /// One of them asks for the one-hour cache (`ttl: "1h"`), whose writes
    /// cost more: the reservation prices the prompt at that rate.
    pub cache_control_1h: bool,
}

/// The API a provider speaks, which decides what it can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions (OpenAI and compatible servers).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAi => "OpenAI Chat Completions",
            Wire::Anthropic => "Anthropic Messages",
        }
    }
}

impl Params {
    /// How many choices the answer has (`n`, at least one).
    pub fn choices(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }

    /// The first field set here that `wire` has no equivalent for, with
    /// why, or None when every field can be sent.
    pub fn unsupported_by(&self, wire: Wire) -> Option<(&'static str, &'static str)> {
        match wire {
            Wire::OpenAi => {
                if self.top_k.is_some() {
                    return Some(("top_k", "the OpenAI Chat Completions API has no top_k"));
                }
                if self.thinking.is_some() {
                    return Some((
                        "thinking",
                        "extended thinking is an Anthropic feature; OpenAI reasoning models take reasoning_effort",
                    ));
                }
                if self.cache_control {
                    return Some((
                        "cache_control",
                        "it has no cache breakpoints: OpenAI caches long prompt prefixes on its own",
                    ));
                }
                if self.stop.len() > 4 {
                    return Some(("stop", "it takes at most 4 stop sequences"));
                }
                None
            }
            Wire::Anthropic => {
                if self.temperature.is_some_and(|t| t > 1.0) {
                    return Some(("temperature", "its temperature goes from 0 to 1"));
                }
                let missing: [(bool, &str); 8] = [
                    (self.choices() > 1, "n"),
                    (self.seed.is_some(), "seed"),
                    (self.presence_penalty.is_some(), "presence_penalty"),
                    (self.frequency_penalty.is_some(), "frequency_penalty"),
                    (self.logit_bias.is_some(), "logit_bias"),
                    (self.logprobs, "logprobs"),
                    (self.top_logprobs.is_some(), "top_logprobs"),
                    (
                        matches!(
                            self.response_format,
                            Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. })
                        ),
                        "response_format",
                    ),
                ];
                missing
                    .into_iter()
                    .find(|(set, _)| *set)
                    .map(|(_, field)| (field, "the Anthropic Messages API has no equivalent"))
            }
        }
    }
}

/// What the engine asks of a provider for one model call.
#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Sampling and answer controls (the pipeline's, with what its
    /// clients may set).
    pub params: std::sync::Arc<Params>,
    /// Already clamped to the pipeline's ceiling.
    pub max_tokens: u32,
    /// Bound on establishing the connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// Tools the model may call (none: the provider is not told of tools).
    pub tools: std::sync::Arc<[ToolSpec]>,
    /// The call's trace context (`traceparent`, `tracestate`), sent as
    /// headers; empty when traces are off.
    pub trace_headers: Vec<(::http::HeaderName, ::http::HeaderValue)>,
}

/// Token usage exactly as the provider reported it: any JSON integer,
/// negative or past `u64::MAX` included up to i128, so that an impossible
/// figure is recorded as sent and checked (`run::usage_check`) rather than
/// failing the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input token, cached ones included.
    pub prompt_tokens: i128,
    pub completion_tokens: i128,
    /// Of `prompt_tokens`, those read from the provider's prompt cache
    /// (OpenAI `prompt_tokens_details.cached_tokens`, Anthropic
    /// `cache_read_input_tokens`).
    pub cache_read_tokens: i128,
    /// Of `prompt_tokens`, those written to the prompt cache (Anthropic
    /// `cache_creation_input_tokens`).
    pub cache_write_tokens: i128,
    /// Of `cache_write_tokens`, those written for an hour (Anthropic
    /// `cache_creation.ephemeral_1h_input_tokens`); None when the provider
    /// did not say how its writes split.
    pub cache_write_1h_tokens: Option<i128>,
}

/// Why the provider says the model stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    /// Stopped on one of the request's stop sequences, the one named when
    /// the provider says which (Anthropic does; OpenAI says `stop`).
    StopSequence(Option<String>),
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
            Self::Stop | Self::StopSequence(_) => "stop",
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
    /// The provider's signature of the reasoning just sent (Anthropic
    /// `signature_delta`, closing a `thinking` block): a client that hands
    /// the reasoning back must send it with it. Never empty.
    ReasoningSignature(String),
    /// Reasoning the provider sent encrypted (an Anthropic
    /// `redacted_thinking` block), whole.
    RedactedReasoning(String),
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
    /// The tool call of this index has all its arguments (Anthropic's
    /// `content_block_stop` of a `tool_use` block). OpenAI-compatible
    /// streams never say: their calls end with the answer.
    ToolCallEnd(u32),
    /// The model stopped; more chunks (usage) may follow.
    Finish(FinishReason),
    /// Usage for the whole call, as reported by the provider.
    Usage(Usage),
    /// The provider's end-of-stream marker (`[DONE]`, `message_stop`).
    End,
    /// The model the provider says is answering (OpenAI's `model` on each
    /// chunk, Anthropic's `message_start`), once, before anything else:
    /// it may differ from the model asked for.
    Model(String),
    /// The chunks that follow, up to the next `Choice`, belong to this
    /// choice (of a request with [`Params::n`] > 1): its text, refusal,
    /// tool-call pieces, finish reason and log probabilities. A stream
    /// starts with choice 0 and names no choice unless it switches, so
    /// a one-choice stream never carries one.
    Choice(u32),
    /// The provider's log probabilities of the tokens the next chunk of
    /// this choice sends (OpenAI's per-choice `logprobs`: `content` and
    /// `refusal` arrays), kept as the provider wrote them. Sent before the
    /// text it describes; only when the request asked for logprobs.
    Logprobs(serde_json::Value),
}

/// The error types Anthropic documents (`error.type`). A provider's
/// in-stream error of one of these keeps it, so that a Messages client
/// sees the provider's own (`overloaded_error`, not a generic one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Billing,
    Permission,
    NotFound,
    RequestTooLarge,
    RateLimit,
    Api,
    Timeout,
    Overloaded,
}

impl ErrorKind {
    const ALL: [ErrorKind; 10] = [
        Self::InvalidRequest,
        Self::Authentication,
        Self::Billing,
        Self::Permission,
        Self::NotFound,
        Self::RequestTooLarge,
        Self::RateLimit,
        Self::Api,
        Self::Timeout,
        Self::Overloaded,
    ];

    /// The kind Anthropic names `s`; None for any other text.
    pub fn from_anthropic(s: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Billing => "billing_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout_error",
            Self::Overloaded => "overloaded_error",
        }
    }
}

impl Chunk {
    /// The chunk with every secret of `secrets` (and echo of one) scrubbed
    /// from what the provider names rather than generates: the model, a
    /// finish reason of its own, the stop sequence it says matched, a
    /// tool call's id. `http.rs` applies it to every chunk it decodes, so
    /// that a provider echoing its key there shows it to nobody (the
    /// model's name reaches every client as the start of the answer).
    pub fn scrubbed(self, secrets: &secrets::Secrets) -> Self {
        let scrub = |s: String| match secrets.scrub(&s) {
            std::borrow::Cow::Borrowed(_) => s,
            std::borrow::Cow::Owned(clean) => clean,
        };
        match self {
            Chunk::Model(m) => Chunk::Model(scrub(m)),
            Chunk::Finish(FinishReason::Other(r)) => Chunk::Finish(FinishReason::Other(scrub(r))),
            Chunk::Finish(FinishReason::StopSequence(Some(s))) => {
                Chunk::Finish(FinishReason::StopSequence(Some(scrub(s))))
            }
            Chunk::ToolCallDelta {
                index,
                id: Some(id),
                name,
                arguments,
            } => Chunk::ToolCallDelta {
                index,
                id: Some(scrub(id)),
                name,
                arguments,
            },
            other => other,
        }
    }
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
    #[error("provider sent an error in the stream: {message}")]
    InStream {
        message: String,
        /// The error's type, when the provider named one of those
        /// Anthropic documents.
        kind: Option<ErrorKind>,
    },
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
            Self::Status { .. } | Self::InStream { .. } | Self::Malformed(_) | Self::Truncated => {
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
            Self::InStream { message, kind } => Self::InStream {
                message: scrub(message),
                kind,
            },
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
            Self::InStream { .. } | Self::Malformed(_) | Self::Config(_) => false,
        }
    }

    /// The type the provider gave its in-stream error, when it is one
    /// Anthropic documents.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::InStream { kind, .. } => *kind,
            _ => None,
        }
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Chunk, ProviderError>> + Send>>;

/// A model provider. `call` resolves once the provider has accepted the
/// request (response headers received); dropping the returned stream must
/// close the upstream connection at once.
pub trait Provider: Send + Sync {
    /// The API it speaks, which decides what a request may ask of it;
    /// None for a provider that takes anything (the replay provider plays
    /// a recording whatever it is asked).
    fn wire(&self) -> Option<Wire>;

    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>>;
}
