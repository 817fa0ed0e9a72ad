//! Entry points into the server's private request-body validators for the
//! fuzz tests (`engine/tests/fuzz.rs`). Not an API: hidden from the docs and
//! free to change with the validators.
//!
//! A child module of `openai_compat`, so it sees that module's private
//! parser (and, inside `serve`, the request module's) without widening
//! either.

use crate::provider::Message;

/// A chat-completions body that passed validation, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatCall {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
}

/// A rejected chat-completions body: OpenAI's `message` and `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInvalid {
    pub message: String,
    pub param: Option<String>,
}

/// Validates a `POST /v1/chat/completions` body.
pub fn parse_chat_completions(body: &[u8]) -> Result<ChatCall, ChatInvalid> {
    super::openai_request::parse(body)
        .map(|r| ChatCall {
            model: r.model,
            messages: r.messages,
            max_tokens: r.max_tokens,
            stream: r.stream,
            include_usage: r.include_usage,
        })
        .map_err(|e| ChatInvalid {
            message: e.message,
            param: e.param,
        })
}

/// Validates a `POST /v1/pipelines/{name}` body.
pub fn parse_pipeline_call(
    body: &[u8],
) -> Result<crate::serve::PipelineCall, crate::serve::Invalid> {
    crate::serve::request::parse(body)
}

/// A Messages body that passed validation, as plain values.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesCall {
    pub model: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
}

/// Validates a `POST /v1/messages` body (`count_tokens: true` for
/// `/v1/messages/count_tokens`). A refusal is `(message, field)`.
pub fn parse_messages(
    body: &[u8],
    count_tokens: bool,
) -> Result<MessagesCall, (String, Option<String>)> {
    use crate::serve::anthropic_request::{Endpoint, parse};
    let endpoint = if count_tokens {
        Endpoint::CountTokens
    } else {
        Endpoint::Messages
    };
    parse(body, endpoint)
        .map(|r| MessagesCall {
            model: r.model,
            messages: r.messages,
            max_tokens: r.max_tokens,
            stream: r.stream,
        })
        .map_err(|e| (e.message, e.param))
}
