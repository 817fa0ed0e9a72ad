//! The server's request-body validators (`serve/request.rs` for
//! `/v1/pipelines/{name}`, `serve/openai_compat.rs` for
//! `/v1/chat/completions`): structure-aware JSON bodies whose fields are
//! well typed, mistyped, huge, negative or nested past any limit, and raw
//! bytes. A valid body is accepted as written; anything else is refused
//! with a message, never a panic.

use proptest::prelude::*;
use sluice::provider::Role;
use sluice::serve::fuzzing::{parse_chat_completions, parse_messages, parse_pipeline_call};

use crate::json::{self, J, field, good, name_value, non_array, non_string, object, str_value};

/// Checks both validators on any bytes.
pub fn check_body(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_pipeline_call(body) {
        Ok(call) => {
            prop_assert!(!call.messages.is_empty());
            prop_assert!(call.max_tokens.is_none_or(|n| n >= 1));
        }
        Err(e) => {
            prop_assert!(!e.message.is_empty());
            prop_assert!(
                !e.message.starts_with(|c: char| c.is_ascii_uppercase()),
                "{:?}",
                e.message
            );
        }
    }
    match parse_chat_completions(body) {
        Ok(call) => {
            prop_assert!(!call.messages.is_empty());
            prop_assert!(call.max_tokens.is_none_or(|n| n >= 1));
        }
        Err(e) => {
            prop_assert!(!e.message.is_empty());
            prop_assert!(
                !e.message.starts_with(|c: char| c.is_ascii_uppercase()),
                "{:?}",
                e.message
            );
        }
    }
    for count_tokens in [false, true] {
        match parse_messages(body, count_tokens) {
            Ok(call) => {
                prop_assert!(!call.messages.is_empty());
                prop_assert!(call.max_tokens.is_some() || count_tokens);
                prop_assert!(call.max_tokens.is_none_or(|n| n >= 1));
            }
            // Anthropic's style: the message opens with the field it names.
            Err((message, field)) => {
                prop_assert!(!message.is_empty());
                if let Some(f) = field {
                    prop_assert!(message.starts_with(&f), "{message:?} names {f:?}");
                }
            }
        }
    }
    Ok(())
}

fn max_tokens() -> BoxedStrategy<J> {
    prop_oneof![(1u32..=u32::MAX).prop_map(J::int), Just(J::int(u32::MAX))].boxed()
}

fn content() -> BoxedStrategy<String> {
    prop_oneof![json::string(), Just(String::new())].boxed()
}

const ROLES: &[&str] = &["system", "user", "assistant"];

/// A body `/v1/pipelines/{name}` must accept, and what it says.
fn valid_pipeline_body() -> impl Strategy<Value = (J, Vec<(String, String)>, Option<J>)> {
    let message = (proptest::sample::select(ROLES), content());
    (
        proptest::collection::vec(message, 1..5),
        any::<bool>(),
        proptest::option::of(max_tokens()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(messages, as_input, max, stream)| {
            let mut fields = Vec::new();
            let expected: Vec<(String, String)>;
            if as_input {
                let text = if messages[0].1.is_empty() {
                    "x".to_string()
                } else {
                    messages[0].1.clone()
                };
                expected = vec![("user".to_string(), text.clone())];
                fields.push(("input".to_string(), J::Str(text)));
            } else {
                expected = messages
                    .iter()
                    .map(|(r, c)| (r.to_string(), c.clone()))
                    .collect();
                let items = messages
                    .iter()
                    .map(|(r, c)| {
                        J::Obj(vec![
                            ("role".into(), J::str(r)),
                            ("content".into(), J::Str(c.clone())),
                        ])
                    })
                    .collect();
                fields.push(("messages".to_string(), J::Arr(items)));
            }
            if let Some(m) = &max {
                fields.push(("max_tokens".to_string(), m.clone()));
            }
            if let Some(s) = stream {
                fields.push(("stream".to_string(), J::Bool(s)));
            }
            (J::Obj(fields), expected, max)
        })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

#[test]
fn valid_pipeline_bodies_are_accepted_as_written() {
    crate::check(
        file!(),
        1,
        valid_pipeline_body(),
        |(body, expected, max)| {
            let text = body.text();
            let call = parse_pipeline_call(text.as_bytes());
            prop_assert!(call.is_ok(), "refused: {call:?}\n{text}");
            let call = call.expect("checked");
            let got: Vec<(String, String)> = call
                .messages
                .iter()
                .map(|m| (role_name(m.role).to_string(), m.text().into_owned()))
                .collect();
            prop_assert_eq!(got, expected);
            let max = max.map(|m| m.text().parse::<u32>().expect("a u32"));
            prop_assert_eq!(call.max_tokens, max);
            Ok(())
        },
    );
}

/// Bodies of either endpoint's shape, every field in any state.
fn hostile_body() -> BoxedStrategy<J> {
    let message = object(vec![
        (
            "role",
            field(
                false,
                name_value(&["system", "user", "assistant", "developer", "tool"]),
                non_string(),
            ),
        ),
        ("content", field(false, str_value(), non_string())),
    ]);
    let messages = json::array(message, 4);
    let max = good(prop_oneof![json::number(), max_tokens()]);
    let metadata = prop_oneof![
        json::value(),
        (1usize..20_000).prop_map(|n| J::Obj(vec![("k".into(), J::Str("v".repeat(n)))])),
    ];
    object(vec![
        (
            "model",
            field(true, name_value(&["chat", "demo"]), non_string()),
        ),
        ("messages", field(true, messages, non_array())),
        ("input", field(true, str_value(), non_string())),
        ("max_tokens", field(true, max.clone(), non_string())),
        ("max_completion_tokens", field(true, max, non_string())),
        (
            "stream",
            field(true, good(any::<bool>().prop_map(J::Bool)), non_string()),
        ),
        (
            "stream_options",
            field(true, good(json::value()), non_string()),
        ),
        ("n", field(true, good(json::number()), non_string())),
        ("tools", field(true, good(json::value()), Just(J::Null))),
        ("metadata", field(true, good(metadata), Just(J::Null))),
    ])
    .prop_map(|(v, _)| v)
    .boxed()
}

/// A hostile body as text, for the server target.
pub fn hostile_body_text() -> BoxedStrategy<String> {
    hostile_body().prop_map(|v| v.text()).boxed()
}

#[test]
fn any_json_body_is_accepted_or_refused_with_a_message() {
    crate::check(file!(), 1, hostile_body(), |body| {
        check_body(body.text().as_bytes())
    });
}

#[test]
fn any_bytes_are_refused_with_a_message() {
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        json::deep().prop_map(|v| v.text().into_bytes()),
        json::value().prop_map(|v| v.text().into_bytes()),
    ];
    crate::check(file!(), 1, strategy, |body| check_body(&body));
}

#[test]
fn valid_chat_bodies_are_accepted_as_written() {
    let message = (
        proptest::sample::select(&["system", "developer", "user", "assistant"][..]),
        content(),
        any::<bool>(),
    );
    let strategy = (
        "[a-z]{1,8}",
        proptest::collection::vec(message, 1..5),
        proptest::option::of(max_tokens()),
        proptest::option::of(any::<bool>()),
    );
    crate::check(file!(), 1, strategy, |(model, messages, max, stream)| {
        let items = messages
            .iter()
            .map(|(r, c, parts)| {
                // Content as a string or as an array of text parts.
                let content = if *parts {
                    J::Arr(vec![J::Obj(vec![
                        ("type".into(), J::str("text")),
                        ("text".into(), J::Str(c.clone())),
                    ])])
                } else {
                    J::Str(c.clone())
                };
                J::Obj(vec![
                    ("role".into(), J::str(r)),
                    ("content".into(), content),
                ])
            })
            .collect();
        let mut fields = vec![
            ("model".to_string(), J::str(&model)),
            ("messages".to_string(), J::Arr(items)),
        ];
        if let Some(m) = &max {
            fields.push(("max_tokens".into(), m.clone()));
        }
        if let Some(s) = stream {
            fields.push(("stream".into(), J::Bool(s)));
        }
        let text = J::Obj(fields).text();
        let call = parse_chat_completions(text.as_bytes());
        prop_assert!(call.is_ok(), "refused: {call:?}\n{text}");
        let call = call.expect("checked");
        prop_assert_eq!(&call.model, &model);
        let contents: Vec<String> = call
            .messages
            .iter()
            .map(|m| m.text().into_owned())
            .collect();
        let expected: Vec<&str> = messages.iter().map(|(_, c, _)| c.as_str()).collect();
        prop_assert_eq!(contents, expected);
        prop_assert_eq!(
            call.max_tokens,
            max.map(|m| m.text().parse::<u32>().expect("a u32"))
        );
        prop_assert_eq!(call.stream, stream.unwrap_or(false));
        Ok(())
    });
}
