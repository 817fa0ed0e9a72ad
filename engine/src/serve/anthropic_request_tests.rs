//! Tests of `anthropic_request.rs` (and the blocks it reads with
//! `anthropic_blocks.rs`).

use super::*;
use crate::provider::Part;

fn parse_ok(v: Value) -> MessagesRequest {
    match parse(v.to_string().as_bytes(), Endpoint::Messages) {
        Ok(r) => r,
        Err(e) => panic!("refused: {}", e.message),
    }
}

fn refused(v: Value) -> (String, Option<String>) {
    match parse(v.to_string().as_bytes(), Endpoint::Messages) {
        Ok(_) => panic!("accepted {v}"),
        Err(e) => (e.message, e.param),
    }
}

#[test]
fn a_full_request_maps_to_the_seam() {
    let r = parse_ok(serde_json::json!({
        "model": "p", "max_tokens": 100, "stream": true,
        "system": [{"type": "text", "text": "be brief"}],
        "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "checking", "citations": null},
                {"type": "tool_use", "id": "tu_1", "name": "weather", "input": {"city": "Oslo"}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "tu_1", "content": [{"type": "text", "text": "cold"}], "is_error": true},
                {"type": "text", "text": "and?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA="}}
            ]}
        ],
        "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["END"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
        "metadata": {"user_id": "u1"},
        "thinking": {"type": "enabled", "budget_tokens": 1024}
    }));
    assert_eq!(r.max_tokens, Some(100));
    assert!(r.stream);
    let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::Tool,
            Role::User
        ]
    );
    assert_eq!(
        r.messages[2].content[0],
        Part::Thinking {
            text: "hm".into(),
            signature: "sig".into()
        }
    );
    assert_eq!(r.messages[2].tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
    assert!(r.messages[3].is_error);
    assert_eq!(r.messages[3].text(), "cold");
    assert!(r.messages[4].has_images());
    assert_eq!(r.params.tool_choice, Some(ToolChoice::Required));
    assert_eq!(r.params.parallel_tool_calls, Some(false));
    assert_eq!(r.params.top_k, Some(40));
    assert_eq!(r.params.user.as_deref(), Some("u1"));
    assert_eq!(r.params.stop, ["END"]);
    assert!(r.params.thinking.is_some());
    assert_eq!(r.tools[0].name, "weather");
    assert_eq!(r.tools[0].strict, Some(true));
}

#[test]
fn refusals_name_the_field() {
    let base = |extra: Value| {
        let mut v = serde_json::json!({"model": "p", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let cases = [
        (serde_json::json!({"max_tokens": null}), "max_tokens"),
        (serde_json::json!({"service_tier": "auto"}), "service_tier"),
        (serde_json::json!({"temperature": 1.5}), "temperature"),
        (
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}),
            "messages[0].content[0].type",
        ),
        (
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": {"type": "forever"}}]}]}),
            "messages[0].content[0].cache_control",
        ),
        (
            serde_json::json!({"messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "s", "cache_control": {"type": "ephemeral"}}]}]}),
            "messages[0].content[0].cache_control",
        ),
        (
            serde_json::json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "nope", "content": "x"}]}]}),
            "messages",
        ),
        (
            serde_json::json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0].type",
        ),
        (
            serde_json::json!({"tools": [{"name": "a"}]}),
            "tools[0].input_schema",
        ),
        (
            serde_json::json!({"tools": [{"name": "a", "input_schema": {}, "strict": "yes"}]}),
            "tools[0].strict",
        ),
        (
            serde_json::json!({"tool_choice": {"type": "tool"}}),
            "tool_choice.name",
        ),
        (
            serde_json::json!({"metadata": {"user_id": "x", "tier": 1}}),
            "metadata.tier",
        ),
        (
            serde_json::json!({"messages": [{"role": "system", "content": "x"}]}),
            "messages[0].role",
        ),
    ];
    for (extra, field) in cases {
        let (message, param) = refused(base(extra.clone()));
        assert_eq!(param.as_deref(), Some(field), "{extra}: {message}");
        assert!(
            message.contains(field.split('[').next().unwrap()),
            "{message}"
        );
    }
}

#[test]
fn cache_breakpoints_are_kept_by_block() {
    let r = parse_ok(serde_json::json!({
        "model": "p", "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "a", "input": {}, "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]
    }));
    // Parts first (the text is block 0), then the call (block 1).
    let marks: Vec<u32> = r.messages[1]
        .cache_control
        .iter()
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(marks, [0, 1]);
    assert!(r.params.cache_control);
    let plain = parse_ok(
        serde_json::json!({"model": "p", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}),
    );
    assert!(!plain.params.cache_control);
}

#[test]
fn count_tokens_needs_no_max_tokens_and_takes_no_sampling() {
    let body = serde_json::json!({"model": "p", "messages": [{"role": "user", "content": "hi"}]});
    assert!(parse(body.to_string().as_bytes(), Endpoint::CountTokens).is_ok());
    let body = serde_json::json!({"model": "p", "temperature": 0.1, "messages": [{"role": "user", "content": "hi"}]});
    let e = parse(body.to_string().as_bytes(), Endpoint::CountTokens)
        .err()
        .unwrap();
    assert_eq!(e.param.as_deref(), Some("temperature"));
}
