//! Sluice's own pipeline API as a bench target (`POST
//! /v1/pipelines/NAME`): its events (`start`, `delta`, `refusal`,
//! `tool_call`, `tool_result`, `usage`, `error`, `done`; see
//! docs/http-api.md) turned into the provider chunks the bench times.

use serde_json::Value;

use crate::provider::http::Decoder;
use crate::provider::sse::SseEvent;
use crate::provider::{Chunk, FinishReason, ProviderError, Usage};

/// Decodes a pipeline's event stream.
#[derive(Default)]
pub(super) struct PipelineDecoder {
    /// Tool calls seen, so each gets an index of its own.
    tool_calls: u32,
}

fn json(ev: &SseEvent) -> Result<Value, ProviderError> {
    serde_json::from_str(&ev.data).map_err(|e| {
        ProviderError::Malformed(format!(
            "the {} event is not JSON: {e}",
            ev.event.as_deref().unwrap_or("message")
        ))
    })
}

fn text(v: &Value) -> Option<String> {
    v["text"]
        .as_str()
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A token count of the `usage` event: any integer, kept as sent.
fn count(v: &Value) -> i128 {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
        .unwrap_or(0)
}

impl Decoder for PipelineDecoder {
    fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError> {
        match ev.event.as_deref() {
            Some("delta") => out.extend(text(&json(ev)?).map(Chunk::Delta)),
            Some("refusal") => out.extend(text(&json(ev)?).map(Chunk::Refusal)),
            Some("tool_call") => {
                let v = json(ev)?;
                let arguments = match &v["arguments"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.push(Chunk::ToolCallDelta {
                    index: self.tool_calls,
                    id: v["id"].as_str().map(str::to_owned),
                    name: v["name"].as_str().map(str::to_owned),
                    arguments,
                });
                self.tool_calls += 1;
            }
            Some("usage") => {
                let v = json(ev)?;
                out.push(Chunk::Usage(Usage {
                    prompt_tokens: count(&v["prompt_tokens"]),
                    completion_tokens: count(&v["completion_tokens"]),
                    ..Usage::default()
                }));
            }
            Some("error") => {
                let v = json(ev)?;
                let code = v["code"].as_str().unwrap_or("error");
                let message = v["message"].as_str().unwrap_or_default();
                return Err(ProviderError::InStream {
                    message: format!("{code}: {message}"),
                    kind: None,
                });
            }
            Some("done") => {
                let v = json(ev)?;
                let reason = match v["finish_reason"].as_str().unwrap_or("stop") {
                    "length" => FinishReason::Length,
                    "tool_calls" => FinishReason::ToolCalls,
                    "content_filter" => FinishReason::ContentFilter,
                    "stop" => FinishReason::Stop,
                    other => FinishReason::Other(other.to_owned()),
                };
                out.push(Chunk::Finish(reason));
                out.push(Chunk::End);
            }
            // `start`, `tool_result` and keep-alives carry nothing timed.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, data: &str) -> SseEvent {
        SseEvent {
            event: Some(name.into()),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn a_pipeline_stream_becomes_chunks() {
        let mut d = PipelineDecoder::default();
        let mut out = Vec::new();
        for (name, data) in [
            (
                "start",
                r#"{"request_id":"r","pipeline":"p","provider":"x","model":"m"}"#,
            ),
            ("delta", r#"{"text":"Hi"}"#),
            ("delta", r#"{"text":""}"#),
            (
                "tool_call",
                r#"{"id":"c1","name":"lookup","arguments":{"a":1},"round":1,"runs":"sluice"}"#,
            ),
            (
                "tool_result",
                r#"{"id":"c1","name":"lookup","ok":true,"rows":1}"#,
            ),
            (
                "usage",
                r#"{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}"#,
            ),
            ("done", r#"{"finish_reason":"stop"}"#),
        ] {
            d.decode(&ev(name, data), &mut out).unwrap();
        }
        assert_eq!(
            out,
            vec![
                Chunk::Delta("Hi".into()),
                Chunk::ToolCallDelta {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("lookup".into()),
                    arguments: r#"{"a":1}"#.into(),
                },
                Chunk::Usage(Usage {
                    prompt_tokens: 7,
                    completion_tokens: 3,
                    ..Usage::default()
                }),
                Chunk::Finish(FinishReason::Stop),
                Chunk::End,
            ]
        );
        let err = d
            .decode(
                &ev("error", r#"{"code":"timeout.idle","message":"silent"}"#),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "provider sent an error in the stream: timeout.idle: silent"
        );
        assert!(d.decode(&ev("delta", "{"), &mut out).is_err());
    }
}
