//! The client APIs a scenario can call, and what each one's answer means
//! to the expectations.
//!
//! A scenario's `api:` picks the route: Sluice's own
//! (`/v1/pipelines/{name}`, named events), OpenAI's Chat Completions
//! (`/v1/chat/completions`, unnamed `data:` chunks ending `[DONE]`) or
//! Anthropic's Messages (`/v1/messages`, Anthropic's named events). The
//! client gives every SSE event a name (see [`Api::event_name`]), and the
//! expectations that read events (`events`, `event_counts`, `text`,
//! `refusal`, `finish_reason`, `error`, `usage`) read them through the
//! functions here, so each keeps one clear meaning per API:
//!
//! | | `pipeline` | `chat_completions` | `messages` |
//! |---|---|---|---|
//! | event names | Sluice's (`start`, `delta`, ..., `done`) | `role`, `delta`, `refusal`, `tool_call`, `finish`, `usage`, `error`, `done` (`[DONE]`), `chunk` (anything else) | Anthropic's (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`, `error`) |
//! | `text` | the `delta` texts (a body's `output`) | the `delta.content`s (a body's `choices[0].message.content`) | the `text_delta`s (a body's `text` blocks) |
//! | `refusal` | the `refusal` texts | the `delta.refusal`s (a body's `message.refusal`) | not available: a refusal is text with `stop_reason: refusal` |
//! | `finish_reason` | `done`'s (a body's) | the last `finish_reason` (a body's `choices[0].finish_reason`) | the last `message_delta`'s `stop_reason` (a body's `stop_reason`) |
//! | `error` | the `error` event's `code` (a body's `error.code`) | the error chunk's `error.code`, else `error.type` (the same in a body) | the `error` event's `error.type` (the same in a body) |
//! | `usage` | the `usage` event (a body's `usage`) | the last chunk with `usage` (a body's) | the last `message_delta`'s `usage` (a body's) |

use serde_json::Value;

use super::client::{Response, SeenEvent};

/// The route a scenario's client calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/pipelines/{pipeline}`: Sluice's own API.
    #[default]
    Pipeline,
    /// `POST /v1/chat/completions`: OpenAI's Chat Completions.
    ChatCompletions,
    /// `POST /v1/messages`: Anthropic's Messages.
    Messages,
}

impl Api {
    pub const NAMES: &'static str = "\"pipeline\", \"chat_completions\" or \"messages\"";

    pub fn parse(s: &str) -> Option<Api> {
        match s {
            "pipeline" => Some(Api::Pipeline),
            "chat_completions" => Some(Api::ChatCompletions),
            "messages" => Some(Api::Messages),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::Pipeline => "pipeline",
            Api::ChatCompletions => "chat_completions",
            Api::Messages => "messages",
        }
    }

    /// The request path for `pipeline`.
    pub fn path(self, pipeline: &str) -> String {
        match self {
            Api::Pipeline => format!("/v1/pipelines/{pipeline}"),
            Api::ChatCompletions => "/v1/chat/completions".to_owned(),
            Api::Messages => "/v1/messages".to_owned(),
        }
    }

    /// The body sent: `request` as written, with `model` set to the
    /// pipeline's name when absent (the two client APIs name the pipeline
    /// there). Nothing else is filled in: a Messages request without
    /// `max_tokens`, or a Chat Completions request without `stream: true`,
    /// is sent as written (a scenario may test those answers too).
    pub fn body(self, request: &Value, pipeline: &str) -> Value {
        let mut body = request.clone();
        if self != Api::Pipeline
            && let Some(map) = body.as_object_mut()
            && !map.contains_key("model")
        {
            map.insert("model".to_owned(), Value::String(pipeline.to_owned()));
        }
        body
    }

    /// The name of one SSE event: its `event:` field (Sluice's and
    /// Anthropic's events are named; Anthropic's `type` if it has none), or
    /// for a Chat Completions chunk what it carries, in this order: `done`
    /// (`[DONE]`), `error`, `usage` (no choice), `finish` (a
    /// `finish_reason`), `tool_call`, `refusal`, `delta` (non-empty
    /// content), `role`, else `chunk`.
    pub fn event_name(self, event: Option<String>, data: &Value) -> String {
        match self {
            Api::Pipeline => event.unwrap_or_default(),
            Api::Messages => event
                .or_else(|| data.get("type").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default(),
            Api::ChatCompletions => chunk_name(data).to_owned(),
        }
    }

    /// The event after which the server reports nothing more: `done` or
    /// `error` (`message_stop` or `error` for Messages).
    fn is_ending(self, name: &str) -> bool {
        match self {
            Api::Pipeline | Api::ChatCompletions => name == "done" || name == "error",
            Api::Messages => name == "message_stop" || name == "error",
        }
    }
}

fn non_empty(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.is_empty())
}

fn chunk_name(data: &Value) -> &'static str {
    if data.as_str() == Some("[DONE]") {
        return "done";
    }
    if data.get("error").is_some() {
        return "error";
    }
    let Some(choice) = data.pointer("/choices/0") else {
        return if data.get("usage").is_some_and(Value::is_object) {
            "usage"
        } else {
            "chunk"
        };
    };
    let delta = &choice["delta"];
    if choice["finish_reason"].is_string() {
        "finish"
    } else if delta["tool_calls"]
        .as_array()
        .is_some_and(|c| !c.is_empty())
    {
        "tool_call"
    } else if non_empty(&delta["refusal"]) {
        "refusal"
    } else if non_empty(&delta["content"]) {
        "delta"
    } else if delta["role"].is_string() {
        "role"
    } else {
        "chunk"
    }
}

fn named<'a>(r: &'a Response, name: &'a str) -> impl DoubleEndedIterator<Item = &'a Value> + 'a {
    r.events
        .iter()
        .filter(move |e| e.name == name)
        .map(|e| &e.data)
}

fn str_at(v: &Value, pointer: &str) -> Option<String> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A JSON body, when the answer was not a stream.
fn body(r: &Response) -> Option<&Value> {
    r.body.as_ref().filter(|_| r.events.is_empty())
}

/// The error code the client saw (see the module's table).
pub fn error_code(api: Api, r: &Response) -> Option<String> {
    let code = |v: &Value| match api {
        Api::Pipeline => str_at(v, "/code"),
        Api::ChatCompletions => str_at(v, "/error/code").or_else(|| str_at(v, "/error/type")),
        Api::Messages => str_at(v, "/error/type"),
    };
    let from_event = named(r, "error").next().and_then(code);
    let from_body = r.body.as_ref().and_then(|b| match api {
        Api::Pipeline => str_at(b, "/error/code"),
        _ => code(b),
    });
    from_event.or(from_body)
}

/// The finish reason the client saw (see the module's table).
pub fn finish_reason(api: Api, r: &Response) -> Option<String> {
    match api {
        Api::Pipeline => named(r, "done")
            .next()
            .or(r.body.as_ref())
            .and_then(|v| str_at(v, "/finish_reason")),
        Api::ChatCompletions => named(r, "finish")
            .filter_map(|v| str_at(v, "/choices/0/finish_reason"))
            .next_back()
            .or_else(|| body(r).and_then(|b| str_at(b, "/choices/0/finish_reason"))),
        Api::Messages => named(r, "message_delta")
            .filter_map(|v| str_at(v, "/delta/stop_reason"))
            .next_back()
            .or_else(|| body(r).and_then(|b| str_at(b, "/stop_reason"))),
    }
}

/// The answer's text (see the module's table).
pub fn text(api: Api, r: &Response) -> String {
    match (api, body(r)) {
        (Api::Pipeline, Some(b)) => str_at(b, "/output").unwrap_or_default(),
        (Api::Pipeline, None) => named(r, "delta")
            .filter_map(|v| v.get("text").and_then(Value::as_str))
            .collect(),
        (Api::ChatCompletions, Some(b)) => {
            str_at(b, "/choices/0/message/content").unwrap_or_default()
        }
        (Api::ChatCompletions, None) => named(r, "delta")
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect(),
        (Api::Messages, Some(b)) => b
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c["type"] == "text")
            .filter_map(|c| c["text"].as_str())
            .collect(),
        (Api::Messages, None) => named(r, "content_block_delta")
            .filter(|v| v.pointer("/delta/type").and_then(Value::as_str) == Some("text_delta"))
            .filter_map(|v| v.pointer("/delta/text").and_then(Value::as_str))
            .collect(),
    }
}

/// The refusal's text (see the module's table); `None` for Messages.
pub fn refusal(api: Api, r: &Response) -> Option<String> {
    Some(match (api, body(r)) {
        (Api::Messages, _) => return None,
        (Api::Pipeline, Some(b)) => str_at(b, "/refusal").unwrap_or_default(),
        (Api::Pipeline, None) => named(r, "refusal")
            .filter_map(|v| v.get("text").and_then(Value::as_str))
            .collect(),
        (Api::ChatCompletions, Some(b)) => {
            str_at(b, "/choices/0/message/refusal").unwrap_or_default()
        }
        (Api::ChatCompletions, None) => named(r, "refusal")
            .filter_map(|v| {
                v.pointer("/choices/0/delta/refusal")
                    .and_then(Value::as_str)
            })
            .collect(),
    })
}

/// The usage the client was told (see the module's table).
pub fn usage(api: Api, r: &Response) -> Option<&Value> {
    let from_events = match api {
        Api::Pipeline => named(r, "usage").next(),
        Api::ChatCompletions => named(r, "usage")
            .chain(named(r, "finish"))
            .filter_map(|v| v.get("usage").filter(|u| u.is_object()))
            .next_back(),
        Api::Messages => named(r, "message_delta")
            .filter_map(|v| v.get("usage").filter(|u| u.is_object()))
            .next_back(),
    };
    from_events.or_else(|| r.body.as_ref().and_then(|b| b.get("usage")))
}

/// The event that reported the ending (see [`Api::is_ending`]).
pub fn ending(api: Api, r: &Response) -> Option<&SeenEvent> {
    r.events.iter().find(|e| api.is_ending(&e.name))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn seen(api: Api, events: &[(Option<&str>, Value)]) -> Response {
        Response {
            status: 200,
            events: events
                .iter()
                .map(|(name, data)| SeenEvent {
                    name: api.event_name(name.map(str::to_owned), data),
                    data: data.clone(),
                    at: Duration::ZERO,
                })
                .collect(),
            ..Response::default()
        }
    }

    fn chunk(delta: Value, finish: Value) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    }

    fn names(r: &Response) -> Vec<&str> {
        r.events.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn chat_chunks_are_named_by_what_they_carry() {
        let r = seen(
            Api::ChatCompletions,
            &[
                (
                    None,
                    chunk(json!({"role": "assistant", "content": ""}), Value::Null),
                ),
                (None, chunk(json!({"content": "Hel"}), Value::Null)),
                (None, chunk(json!({"content": "lo"}), Value::Null)),
                (None, chunk(json!({"refusal": "no"}), Value::Null)),
                (
                    None,
                    chunk(
                        json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]}),
                        Value::Null,
                    ),
                ),
                (None, chunk(json!({}), json!("tool_calls"))),
                (
                    None,
                    json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
                ),
                (None, json!({"choices": [{"index": 0, "delta": {}}]})),
                (None, json!("[DONE]")),
            ],
        );
        assert_eq!(
            names(&r),
            [
                "role",
                "delta",
                "delta",
                "refusal",
                "tool_call",
                "finish",
                "usage",
                "chunk",
                "done"
            ]
        );
        let api = Api::ChatCompletions;
        assert_eq!(text(api, &r), "Hello");
        assert_eq!(refusal(api, &r).as_deref(), Some("no"));
        assert_eq!(finish_reason(api, &r).as_deref(), Some("tool_calls"));
        assert_eq!(usage(api, &r).unwrap()["prompt_tokens"], 3);
        assert_eq!(error_code(api, &r), None);
        assert_eq!(ending(api, &r).unwrap().name, "done");
    }

    #[test]
    fn a_chat_error_chunk_gives_its_code_or_its_type() {
        let api = Api::ChatCompletions;
        let r = seen(
            api,
            &[
                (None, chunk(json!({"content": "Hi"}), Value::Null)),
                (
                    None,
                    json!({"error": {"message": "m", "type": "timeout", "code": "timeout.idle"}}),
                ),
            ],
        );
        assert_eq!(names(&r), ["delta", "error"]);
        assert_eq!(error_code(api, &r).as_deref(), Some("timeout.idle"));
        assert_eq!(finish_reason(api, &r), None);
        assert_eq!(ending(api, &r).unwrap().name, "error");
        let body = Response {
            status: 400,
            body: Some(
                json!({"error": {"message": "m", "type": "invalid_request_error", "code": null}}),
            ),
            ..Response::default()
        };
        assert_eq!(
            error_code(api, &body).as_deref(),
            Some("invalid_request_error")
        );
        let whole = Response {
            status: 200,
            body: Some(json!({"choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "Hi", "refusal": null}}],
                "usage": {"prompt_tokens": 1}})),
            ..Response::default()
        };
        assert_eq!(text(api, &whole), "Hi");
        assert_eq!(finish_reason(api, &whole).as_deref(), Some("stop"));
        assert_eq!(usage(api, &whole).unwrap()["prompt_tokens"], 1);
    }

    #[test]
    fn messages_events_keep_anthropic_names() {
        let api = Api::Messages;
        let r = seen(
            api,
            &[
                (Some("message_start"), json!({"type": "message_start"})),
                (
                    Some("content_block_start"),
                    json!({"type": "content_block_start", "index": 0}),
                ),
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hel"}}),
                ),
                (
                    None,
                    json!({"type": "content_block_delta", "delta": {"type": "input_json_delta", "partial_json": "{"}}),
                ),
                (
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "lo"}}),
                ),
                (
                    Some("content_block_stop"),
                    json!({"type": "content_block_stop"}),
                ),
                (
                    Some("message_delta"),
                    json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 2}}),
                ),
                (Some("message_stop"), json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(
            names(&r),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(text(api, &r), "Hello");
        assert_eq!(finish_reason(api, &r).as_deref(), Some("max_tokens"));
        assert_eq!(usage(api, &r).unwrap()["output_tokens"], 2);
        assert_eq!(refusal(api, &r), None);
        assert_eq!(ending(api, &r).unwrap().name, "message_stop");
        let failed = seen(
            api,
            &[(
                Some("error"),
                json!({"type": "error", "error": {"type": "timeout_error", "message": "m"}}),
            )],
        );
        assert_eq!(error_code(api, &failed).as_deref(), Some("timeout_error"));
        let whole = Response {
            status: 200,
            body: Some(json!({"type": "message", "stop_reason": "tool_use",
                "content": [{"type": "text", "text": "a"}, {"type": "tool_use"}, {"type": "text", "text": "b"}]})),
            ..Response::default()
        };
        assert_eq!(text(api, &whole), "ab");
        assert_eq!(finish_reason(api, &whole).as_deref(), Some("tool_use"));
    }

    #[test]
    fn the_model_is_filled_in_for_the_client_apis_only() {
        let req = json!({"messages": []});
        assert_eq!(
            Api::ChatCompletions.body(&req, "demo"),
            json!({"messages": [], "model": "demo"})
        );
        assert_eq!(
            Api::Messages.body(&json!({"model": "other"}), "demo"),
            json!({"model": "other"})
        );
        assert_eq!(Api::Pipeline.body(&req, "demo"), req);
        assert_eq!(Api::Messages.path("demo"), "/v1/messages");
        assert_eq!(Api::Pipeline.path("demo"), "/v1/pipelines/demo");
        for api in [Api::Pipeline, Api::ChatCompletions, Api::Messages] {
            assert_eq!(Api::parse(api.as_str()), Some(api));
        }
        assert_eq!(Api::parse("openai"), None);
    }
}
