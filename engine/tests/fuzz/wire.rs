//! The stream-event decoders of both wire formats (`openai_wire.rs`,
//! `anthropic_wire.rs`): structure-aware chunks whose every field is well
//! typed, wrongly typed, absent, null, huge, negative or nested past any
//! limit, in any order and with unknown fields; unknown event types; and
//! arbitrary text. Whatever arrives, decoding returns a value: a well-typed
//! event decodes, a failure appends nothing and its message is one bounded
//! line, and text chunks are never empty.

use proptest::prelude::*;
use sluice::provider::anthropic_wire::AnthropicDecoder;
use sluice::provider::openai_wire::OpenAiDecoder;
use sluice::provider::sse::SseEvent;
use sluice::provider::{Chunk, ProviderError};

use crate::json::{
    self, J, Typed, array, field, good, name_value, non_array, non_object, non_string, non_u32,
    non_u64, object, str_value, u32_value, u64_value,
};

/// Longest error message a decoder may produce, in characters: these go
/// to logs and to clients.
const MESSAGE_MAX: usize = 512;

pub fn check_error(e: &ProviderError) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.is_empty());
    prop_assert!(
        !msg.contains(['\n', '\r']),
        "error message spans lines: {msg:?}"
    );
    prop_assert!(
        msg.chars().count() <= MESSAGE_MAX,
        "error message of {} chars",
        msg.chars().count()
    );
    Ok(())
}

/// Either decoder's `decode`.
pub type Decode<'a> = dyn FnMut(&SseEvent, &mut Vec<Chunk>) -> Result<(), ProviderError> + 'a;

/// Decodes one event and checks what must hold for any event.
pub fn decode_checked(
    decode: &mut Decode<'_>,
    ev: &SseEvent,
    out: &mut Vec<Chunk>,
) -> Result<Result<(), ProviderError>, TestCaseError> {
    let before = out.len();
    let res = decode(ev, out);
    match &res {
        Err(e) => {
            prop_assert_eq!(
                out.len(),
                before,
                "chunks appended by a failed decode: {:?}",
                &out[before..]
            );
            check_error(e)?;
        }
        Ok(()) => {
            for c in &out[before..] {
                if let Chunk::Delta(t) = c {
                    prop_assert!(!t.is_empty(), "an empty text delta");
                }
            }
        }
    }
    Ok(res)
}

fn event(name: Option<&str>, data: String) -> SseEvent {
    SseEvent {
        event: name.map(str::to_string),
        data,
        id: None,
    }
}

fn text_of(chunks: &[Chunk]) -> String {
    chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Delta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn get<'a>(obj: &'a J, key: &str) -> Option<&'a J> {
    match obj {
        J::Obj(fields) => fields.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

fn as_str(v: Option<&J>) -> Option<&str> {
    match v {
        Some(J::Str(s)) => Some(s),
        _ => None,
    }
}

// ---- OpenAI ----

const FINISH: &[&str] = &[
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
];

fn openai_tool_call() -> Typed {
    let function = object(vec![
        ("name", field(true, str_value(), non_string())),
        ("arguments", field(true, str_value(), non_string())),
    ]);
    object(vec![
        ("index", field(true, u32_value(), non_u32())),
        ("id", field(true, str_value(), non_string())),
        (
            "type",
            field(true, good(Just(J::str("function"))), non_string()),
        ),
        ("function", field(true, function, non_object())),
    ])
}

fn openai_choice() -> Typed {
    let delta = object(vec![
        (
            "role",
            field(true, good(Just(J::str("assistant"))), non_string()),
        ),
        ("content", field(true, str_value(), non_string())),
        ("refusal", field(true, str_value(), non_string())),
        (
            "tool_calls",
            field(true, array(openai_tool_call(), 4), non_array()),
        ),
    ]);
    object(vec![
        (
            "index",
            field(
                true,
                good(prop_oneof![3 => Just(J::int(0)), 1 => Just(J::int(1))]),
                non_u32(),
            ),
        ),
        ("delta", field(true, delta, non_object())),
        (
            "finish_reason",
            field(true, name_value(FINISH), non_string()),
        ),
        ("logprobs", field(true, good(json::value()), Just(J::Null))),
    ])
}

fn openai_usage() -> Typed {
    object(vec![
        ("prompt_tokens", field(false, u64_value(), non_u64())),
        ("completion_tokens", field(false, u64_value(), non_u64())),
        ("total_tokens", field(true, u64_value(), Just(J::Null))),
    ])
}

/// A chunk: `(data, well_typed)`.
fn openai_chunk() -> Typed {
    object(vec![
        ("id", field(true, str_value(), Just(J::Null))),
        (
            "object",
            field(
                true,
                good(Just(J::str("chat.completion.chunk"))),
                Just(J::Null),
            ),
        ),
        (
            "choices",
            field(true, array(openai_choice(), 3), non_array()),
        ),
        ("usage", field(true, openai_usage(), non_object())),
        (
            "error",
            // Any value, numbers serde_json cannot hold (`1e400`) included:
            // an error chunk is an error whatever it carries.
            prop_oneof![9 => Just((None, true)), 1 => json::value().prop_map(|v| (Some(v), true))]
                .boxed(),
        ),
    ])
}

/// The text a well-typed OpenAI chunk carries: `content` of choice 0.
fn openai_text(chunk: &J) -> String {
    let Some(J::Arr(choices)) = get(chunk, "choices") else {
        return String::new();
    };
    choices
        .iter()
        .filter(|c| {
            matches!(get(c, "index"), None | Some(J::Null))
                || matches!(get(c, "index"), Some(J::Num(n)) if n == "0")
        })
        .filter_map(|c| as_str(get(c, "delta").and_then(|d| get(d, "content"))))
        .collect()
}

fn has_refusal(chunk: &J) -> bool {
    match get(chunk, "choices") {
        Some(J::Arr(choices)) => choices
            .iter()
            .any(|c| !is_null_or_absent(get(c, "delta").and_then(|d| get(d, "refusal")))),
        _ => false,
    }
}

fn is_null_or_absent(v: Option<&J>) -> bool {
    matches!(v, None | Some(J::Null))
}

#[test]
fn openai_chunks_decode_to_values() {
    let strategy = (openai_chunk(), "[ \t\r\n]{0,2}", "[ \t\r\n]{0,2}");
    crate::check(file!(), 2, strategy, |((chunk, typed), pre, post)| {
        let data = format!("{pre}{}{post}", chunk.text());
        let mut dec = OpenAiDecoder::new();
        let mut out = Vec::new();
        let res = decode_checked(
            &mut |e, o| dec.decode(e, o),
            &event(None, data.clone()),
            &mut out,
        )?;
        let has_error = !is_null_or_absent(get(&chunk, "error"));
        let empty =
            is_null_or_absent(get(&chunk, "choices")) && is_null_or_absent(get(&chunk, "usage"));
        if typed && !has_error && !empty {
            prop_assert!(
                res.is_ok(),
                "a well-typed chunk was refused: {res:?}\n{data}"
            );
            // Refusals may become chunks of their own kind: the text is
            // compared only where there is none.
            if !has_refusal(&chunk) {
                prop_assert_eq!(text_of(&out), openai_text(&chunk));
            }
        }
        if typed && has_error {
            prop_assert!(
                matches!(res, Err(ProviderError::InStream { .. })),
                "an error chunk gave {res:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn openai_any_text_is_a_value() {
    let strategy = prop_oneof![
        any::<String>(),
        json::value().prop_map(|v| v.text()),
        json::deep().prop_map(|v| v.text()),
        Just("[DONE]".to_string()),
    ];
    crate::check(file!(), 1, strategy, |data| {
        let mut out = Vec::new();
        let mut dec = OpenAiDecoder::new();
        let _ = decode_checked(&mut |e, o| dec.decode(e, o), &event(None, data), &mut out)?;
        Ok(())
    });
}

// ---- Anthropic ----

const EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

fn anthropic_usage() -> Typed {
    object(vec![
        ("input_tokens", field(true, u64_value(), non_u64())),
        ("output_tokens", field(true, u64_value(), non_u64())),
        (
            "cache_creation_input_tokens",
            field(true, u64_value(), non_u64()),
        ),
        (
            "cache_read_input_tokens",
            field(true, u64_value(), non_u64()),
        ),
    ])
}

/// The data of event `name` (with its `type`): `(data, well_typed)`.
fn anthropic_data(name: &'static str) -> Typed {
    let kind = ("type", field(true, good(Just(J::str(name))), Just(J::Null)));
    match name {
        "message_start" => {
            let message = object(vec![
                ("id", field(true, str_value(), Just(J::Null))),
                ("usage", field(true, anthropic_usage(), non_object())),
            ]);
            object(vec![kind, ("message", field(false, message, non_object()))])
        }
        "content_block_start" => {
            let block = object(vec![
                (
                    "type",
                    field(
                        false,
                        name_value(&["text", "tool_use", "thinking", "server_tool_use"]),
                        non_string(),
                    ),
                ),
                ("text", field(true, str_value(), non_string())),
                ("id", field(true, str_value(), non_string())),
                ("name", field(true, str_value(), non_string())),
            ]);
            object(vec![
                kind,
                ("index", field(false, u32_value(), non_u32())),
                ("content_block", field(false, block, non_object())),
            ])
        }
        "content_block_delta" => {
            let delta = object(vec![
                (
                    "type",
                    field(
                        false,
                        name_value(&[
                            "text_delta",
                            "input_json_delta",
                            "thinking_delta",
                            "signature_delta",
                        ]),
                        non_string(),
                    ),
                ),
                ("text", field(true, str_value(), non_string())),
                ("partial_json", field(true, str_value(), non_string())),
            ]);
            object(vec![
                kind,
                ("index", field(false, u32_value(), non_u32())),
                ("delta", field(false, delta, non_object())),
            ])
        }
        "message_delta" => {
            let delta = object(vec![(
                "stop_reason",
                field(
                    true,
                    name_value(&["end_turn", "max_tokens", "tool_use", "refusal"]),
                    non_string(),
                ),
            )]);
            object(vec![
                kind,
                ("delta", field(true, delta, non_object())),
                ("usage", field(true, anthropic_usage(), non_object())),
            ])
        }
        "error" => {
            let error = object(vec![
                ("type", field(true, str_value(), non_string())),
                ("message", field(true, str_value(), non_string())),
            ]);
            object(vec![kind, ("error", field(true, error, non_object()))])
        }
        _ => good(json::value()),
    }
}

/// An event: its SSE name (maybe dropped, as some proxies do), its data
/// and whether it is well typed.
fn anthropic_event() -> impl Strategy<Value = (Option<&'static str>, &'static str, J, bool)> {
    prop_oneof![
        6 => proptest::sample::select(EVENTS),
        1 => Just("some_future_event"),
    ]
    .prop_flat_map(|name| {
        (
            prop_oneof![4 => Just(true), 1 => Just(false)],
            Just(name),
            anthropic_data(name),
        )
    })
    .prop_map(|(named, name, (data, typed))| {
        // Without a name the decoder reads `type` from the data.
        let typed = typed && (named || as_str(get(&data, "type")) == Some(name));
        (named.then_some(name), name, data, typed)
    })
}

/// The text a well-typed Anthropic event carries, where that is certain:
/// text blocks carry theirs, tool blocks none; thinking and future block
/// kinds may be reported some other way, so they claim nothing.
fn anthropic_text(name: &str, data: &J) -> Option<String> {
    let (inner, text_kind, other_kind) = match name {
        "content_block_start" => (get(data, "content_block"), "text", "tool_use"),
        "content_block_delta" => (get(data, "delta"), "text_delta", "input_json_delta"),
        _ => return None,
    };
    let kind = as_str(inner.and_then(|b| get(b, "type")));
    if kind == Some(text_kind) {
        Some(
            as_str(inner.and_then(|b| get(b, "text")))
                .unwrap_or_default()
                .to_string(),
        )
    } else if kind == Some(other_kind) {
        Some(String::new())
    } else {
        None
    }
}

#[test]
fn anthropic_streams_decode_to_values() {
    let strategy = proptest::collection::vec(anthropic_event(), 1..8);
    crate::check(file!(), 4, strategy, |events| {
        // One decoder for the whole stream: it keeps counts across events.
        let mut dec = AnthropicDecoder::new();
        for (sse_name, name, data, typed) in events {
            let mut out = Vec::new();
            let ev = event(sse_name, data.text());
            let res = decode_checked(&mut |e, o| dec.decode(e, o), &ev, &mut out)?;
            match name {
                // Without its SSE name an event is what its `type` says.
                "error" if sse_name.is_some() || as_str(get(&data, "type")) == Some("error") => {
                    prop_assert!(
                        matches!(res, Err(ProviderError::InStream { .. })),
                        "an error event gave {res:?}"
                    )
                }
                "some_future_event" if sse_name.is_some() => {
                    prop_assert!(
                        res.is_ok() && out.is_empty(),
                        "an unknown event gave {res:?} {out:?}"
                    )
                }
                _ if typed => {
                    prop_assert!(
                        res.is_ok(),
                        "a well-typed {name} was refused: {res:?}\n{}",
                        ev.data
                    );
                    if let Some(text) = anthropic_text(name, &data) {
                        prop_assert_eq!(text_of(&out), text);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    });
}

#[test]
fn anthropic_any_text_is_a_value() {
    let name = proptest::option::of(prop_oneof![
        proptest::sample::select(EVENTS).prop_map(str::to_string),
        "[a-z_]{0,12}"
    ]);
    let data = prop_oneof![
        any::<String>(),
        json::value().prop_map(|v| v.text()),
        json::deep().prop_map(|v| v.text()),
    ];
    crate::check(file!(), 1, (name, data), |(name, data)| {
        let mut out = Vec::new();
        let mut dec = AnthropicDecoder::new();
        let _ = decode_checked(
            &mut |e, o| dec.decode(e, o),
            &event(name.as_deref(), data),
            &mut out,
        )?;
        Ok(())
    });
}
