//! Validating a client's request body. Every rejection names the field at
//! fault, so a client can fix its request without reading our source.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::provider::{Message, Role};

/// A request body that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineCall {
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub stream: bool,
    pub metadata: Option<serde_json::Map<String, Value>>,
}

/// A 400 answer: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: Option<String>,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: Some(field.into()),
        message: message.into(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

const FIELDS: &[&str] = &["messages", "input", "max_tokens", "stream", "metadata"];
const ROLES: &[&str] = &["system", "user", "assistant"];
/// Longest accepted `metadata`, serialized.
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub fn parse(body: &[u8]) -> Result<PipelineCall, Invalid> {
    let value: Value = serde_json::from_slice(body).map_err(|e| Invalid {
        field: None,
        message: format!("request body is not valid JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(Invalid {
            field: None,
            message: format!(
                "request body must be a JSON object, found {}",
                type_name(&value)
            ),
        });
    };
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            return Err(invalid(
                key.clone(),
                format!(
                    "unknown field \"{key}\", expected one of messages, input, max_tokens, stream, metadata"
                ),
            ));
        }
    }
    let messages = match (obj.get("messages"), obj.get("input")) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "input",
                "give either \"messages\" or \"input\", not both",
            ));
        }
        (None, None) => {
            return Err(Invalid {
                field: Some("messages".into()),
                message: "missing \"messages\" (or \"input\")".into(),
            });
        }
        (None, Some(Value::String(s))) => {
            if s.is_empty() {
                return Err(invalid("input", "\"input\" is empty"));
            }
            vec![Message::new(Role::User, s.clone())]
        }
        (None, Some(other)) => {
            return Err(invalid(
                "input",
                format!("\"input\" must be a string, found {}", type_name(other)),
            ));
        }
        (Some(Value::Array(items)), None) => parse_messages(items)?,
        (Some(other), None) => {
            return Err(invalid(
                "messages",
                format!("\"messages\" must be an array, found {}", type_name(other)),
            ));
        }
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= 1 && v <= u64::from(u32::MAX) => Some(v as u32),
            _ => {
                return Err(invalid(
                    "max_tokens",
                    format!("\"max_tokens\" must be a positive integer, found {n}"),
                ));
            }
        },
        Some(other) => {
            return Err(invalid(
                "max_tokens",
                format!(
                    "\"max_tokens\" must be a positive integer, found {}",
                    type_name(other)
                ),
            ));
        }
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                "stream",
                format!("\"stream\" must be a boolean, found {}", type_name(other)),
            ));
        }
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            if serde_json::to_vec(m).map_or(0, |v| v.len()) > MAX_METADATA_BYTES {
                return Err(invalid(
                    "metadata",
                    format!("\"metadata\" is larger than {MAX_METADATA_BYTES} bytes"),
                ));
            }
            Some(m.clone())
        }
        Some(other) => {
            return Err(invalid(
                "metadata",
                format!("\"metadata\" must be an object, found {}", type_name(other)),
            ));
        }
    };
    Ok(PipelineCall {
        messages,
        max_tokens,
        stream,
        metadata,
    })
}

fn parse_messages(items: &[Value]) -> Result<Vec<Message>, Invalid> {
    if items.is_empty() {
        return Err(invalid(
            "messages",
            "\"messages\" is empty; give at least one message",
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}]{f}");
        let Value::Object(m) = item else {
            return Err(invalid(
                at(""),
                format!("each message must be an object, found {}", type_name(item)),
            ));
        };
        for key in m.keys() {
            if key != "role" && key != "content" {
                return Err(invalid(
                    at(&format!(".{key}")),
                    format!("unknown field \"{key}\" in a message, expected role and content"),
                ));
            }
        }
        let role = match m.get("role") {
            Some(Value::String(r)) => match r.as_str() {
                "system" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(invalid(
                        at(".role"),
                        format!(
                            "unknown role \"{other}\", expected one of {}",
                            ROLES.join(", ")
                        ),
                    ));
                }
            },
            Some(other) => {
                return Err(invalid(
                    at(".role"),
                    format!("role must be a string, found {}", type_name(other)),
                ));
            }
            None => return Err(invalid(at(".role"), "missing \"role\"")),
        };
        let content = match m.get("content") {
            Some(Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(invalid(
                    at(".content"),
                    format!("content must be a string, found {}", type_name(other)),
                ));
            }
            None => return Err(invalid(at(".content"), "missing \"content\"")),
        };
        out.push(Message::new(role, content));
    }
    Ok(out)
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body must be JSON: send Content-Type: application/json")]
    NotJson,
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("cannot read request body: {0}")]
    Read(String),
    #[error("request body did not arrive whole within {} (body_timeout)", humantime::format_duration(*.0))]
    Timeout(Duration),
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Read(_) => StatusCode::BAD_REQUEST,
            BodyError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub(crate) fn code(&self) -> &'static str {
        match self {
            BodyError::NotJson => "unsupported_media_type",
            BodyError::TooLarge(_) => "body_too_large",
            BodyError::Read(_) => "invalid_request",
            BodyError::Timeout(_) => "request_timeout",
        }
    }
}

/// Reads a JSON request body of at most `limit` bytes within `timeout`: the
/// content type is checked first, a declared length over the limit is
/// refused unread, a chunked body is cut off as soon as it passes the
/// limit, and a body still incomplete at the deadline (however it trickles
/// in) is answered 408.
pub(crate) async fn read_json_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return Err(BodyError::NotJson);
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    // One timer for the whole body: a per-read deadline would let a client
    // hold the request open forever by sending a byte just in time.
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    let Ok(collected) = read.await else {
        return Err(BodyError::Timeout(timeout));
    };
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(body: &str) -> Option<String> {
        parse(body.as_bytes()).unwrap_err().field
    }

    #[test]
    fn accepts_messages_or_input() {
        let c =
            parse(br#"{"input":"hi","max_tokens":5,"stream":false,"metadata":{"k":"v"}}"#).unwrap();
        assert_eq!(c.messages, vec![Message::new(Role::User, "hi")]);
        assert_eq!(c.max_tokens, Some(5));
        assert!(!c.stream);
        let c = parse(
            br#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}"#,
        )
        .unwrap();
        assert_eq!(c.messages.len(), 2);
        assert!(c.stream);
    }

    #[test]
    fn rejections_name_the_field() {
        assert_eq!(parse(b"{not json").unwrap_err().field, None);
        assert_eq!(field_of("{}"), Some("messages".into()));
        assert_eq!(field_of(r#"{"messages":[]}"#), Some("messages".into()));
        assert_eq!(field_of(r#"{"messages":"hi"}"#), Some("messages".into()));
        assert_eq!(
            field_of(r#"{"messages":[{"role":"bot","content":"x"}]}"#),
            Some("messages[0].role".into())
        );
        assert_eq!(
            field_of(r#"{"messages":[{"role":"user","content":"x"},{"role":"user","content":3}]}"#),
            Some("messages[1].content".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","max_tokens":-1}"#),
            Some("max_tokens".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","max_tokens":"5"}"#),
            Some("max_tokens".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","stream":"yes"}"#),
            Some("stream".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","metadata":[1]}"#),
            Some("metadata".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","temprature":1}"#),
            Some("temprature".into())
        );
        assert_eq!(
            field_of(r#"{"input":"x","messages":[]}"#),
            Some("input".into())
        );
        assert!(parse(b"[1,2]").unwrap_err().message.contains("an array"));
    }
}
