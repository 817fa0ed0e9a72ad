//! Questions tests ask of a [`RecordedRequest`]: what the gateway sent
//! upstream (was `max_tokens` clamped, was usage asked for, which tool
//! results went back), what the mock sent before the gateway hung up, and
//! how long after a deadline it hung up.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::journal::{Journal, RecordedRequest};

/// A tool result the gateway sent back to the model in a request body.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolResult {
    /// OpenAI `tool_call_id`, Anthropic `tool_use_id`.
    pub id: String,
    /// The result as text (Anthropic text blocks joined).
    pub content: String,
    /// Anthropic's `is_error`; always false on the OpenAI wire.
    pub is_error: bool,
}

/// What the mock had written when the client closed the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentBeforeClose {
    pub events: usize,
    pub bytes: usize,
}

impl RecordedRequest {
    /// `max_tokens` of the body (or OpenAI's `max_completion_tokens`).
    pub fn max_tokens(&self) -> Option<u64> {
        self.body
            .get("max_tokens")
            .or_else(|| self.body.get("max_completion_tokens"))
            .and_then(Value::as_u64)
    }

    /// Whether an OpenAI body asked for `stream_options.include_usage`.
    pub fn include_usage(&self) -> bool {
        self.body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true))
    }

    /// Whether the body asked for a stream (`"stream": true`).
    pub fn streamed(&self) -> bool {
        self.body.get("stream") == Some(&Value::Bool(true))
    }

    /// The value at a dotted path of the body, e.g. `"stream_options.include_usage"`
    /// or `"messages.0.role"` (see [`lookup`]).
    pub fn body_at(&self, path: &str) -> Option<&Value> {
        lookup(&self.body, path)
    }

    /// Tool results in the body: OpenAI `role: "tool"` messages and
    /// Anthropic `tool_result` content blocks, in order.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        let mut out = Vec::new();
        let messages = self.body.get("messages").and_then(Value::as_array);
        for m in messages.into_iter().flatten() {
            if m.get("role").and_then(Value::as_str) == Some("tool") {
                out.push(ToolResult {
                    id: str_of(m, "tool_call_id"),
                    content: text_of(m.get("content")),
                    is_error: false,
                });
            }
            let blocks = m.get("content").and_then(Value::as_array);
            for b in blocks.into_iter().flatten() {
                if b.get("type").and_then(Value::as_str) == Some("tool_result") {
                    out.push(ToolResult {
                        id: str_of(b, "tool_use_id"),
                        content: text_of(b.get("content")),
                        is_error: b.get("is_error") == Some(&Value::Bool(true)),
                    });
                }
            }
        }
        out
    }

    /// When the client closed the connection that carried this request
    /// (mid-reply or later), if it did.
    pub fn closed_at(&self) -> Option<Instant> {
        self.client_closed_at.or(self.connection_closed_at)
    }

    /// Events and bytes written before the client closed mid-reply; `None`
    /// if the reply finished (or the mock hung up) first.
    pub fn sent_before_close(&self) -> Option<SentBeforeClose> {
        self.client_closed_at.map(|_| SentBeforeClose {
            events: self.events_sent,
            bytes: self.bytes_sent,
        })
    }

    /// How long after `deadline` the client closed the connection. `None`
    /// if it has not closed, or closed before the deadline (see
    /// [`RecordedRequest::closed_before`]).
    pub fn closed_after(&self, deadline: Instant) -> Option<Duration> {
        self.closed_at()?.checked_duration_since(deadline)
    }

    /// How long before `deadline` the client closed, if it did close
    /// before it (a deadline that fired early).
    pub fn closed_before(&self, deadline: Instant) -> Option<Duration> {
        let at = self.closed_at()?;
        (at < deadline).then(|| deadline - at)
    }

    /// When an idle deadline of `idle` falls: `idle` after the last event
    /// written (or after the headers if no event was).
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        self.last_event_at
            .or(self.headers_sent_at)
            .map(|t| t + idle)
    }
}

impl Journal {
    /// Waits until the client closes the connection of request `i` and
    /// returns how long after `deadline` that was (zero if before it; use
    /// [`RecordedRequest::closed_before`] to tell). `None` on timeout.
    pub async fn wait_closed_after(
        &self,
        i: usize,
        deadline: Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let at = self.wait_closed(i, timeout).await?;
        Some(at.saturating_duration_since(deadline))
    }
}

/// The value at a dotted path: object keys separated by `.`, array
/// elements by their index (`"messages.1.content"`). A key that itself
/// contains a dot is tried whole first.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(v);
    }
    if let Some(x) = v.get(path) {
        return Some(x);
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let next = match v {
        Value::Object(m) => m.get(head)?,
        Value::Array(a) => a.get(head.parse::<usize>().ok()?)?,
        _ => return None,
    };
    lookup(next, rest)
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn text_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_paths_reach_keys_and_indices() {
        let v = json!({"stream_options": {"include_usage": true}, "messages": [{"role": "system"}], "a.b": 1});
        assert_eq!(
            lookup(&v, "stream_options.include_usage"),
            Some(&json!(true))
        );
        assert_eq!(lookup(&v, "messages.0.role"), Some(&json!("system")));
        assert_eq!(lookup(&v, "a.b"), Some(&json!(1)));
        assert_eq!(lookup(&v, "messages.3"), None);
    }

    #[test]
    fn text_of_joins_blocks() {
        let blocks = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(text_of(Some(&blocks)), "ab");
        assert_eq!(text_of(Some(&json!({"x": 1}))), "{\"x\":1}");
    }
}
