//! Tests of `secrets.rs`: what is scrubbed, and what is left alone.
use super::*;

const KEY: &str = "sk-proj-Zq7vN2kLx9PwR4tY8mB1cD5fG3hJ6aS0eU";

fn secrets() -> Secrets {
    let s = Secrets::new();
    s.add_key(KEY);
    s
}

fn scrub(text: &str) -> String {
    secrets().scrub(text).into_owned()
}

#[test]
fn the_whole_key_goes_wherever_it_is() {
    for (text, expected) in [
        (
            format!("Authorization: Bearer {KEY}"),
            "Authorization: Bearer [redacted]".to_string(),
        ),
        (
            format!(r#"{{"error":{{"message":"bad key {KEY}"}}}}"#),
            r#"{"error":{"message":"bad key [redacted]"}}"#.to_string(),
        ),
        (
            format!("x{KEY}y and {KEY}"),
            "x[redacted]y and [redacted]".to_string(),
        ),
        (format!("key={KEY}&a=1"), "key=[redacted]&a=1".to_string()),
    ] {
        assert_eq!(scrub(&text), expected, "{text}");
    }
}

#[test]
fn partial_echoes_go_too() {
    let head = &KEY[..20];
    let tail = &KEY[KEY.len() - 12..];
    let mut changed = KEY.to_string();
    changed.replace_range(20..21, "#");
    for text in [
        // Cut at either end, or one character changed.
        format!("provided: {head}"),
        format!("provided: ...{tail}"),
        format!("provided: {changed}"),
        // Masked as OpenAI prints it.
        "Incorrect API key provided: sk-proj-************************************a0eU. You can find your API key at https://platform.openai.com/account/api-keys.".replace("a0eU", &KEY[KEY.len() - 4..]),
        format!("key sk-...{}", &KEY[KEY.len() - 4..]),
        // A summary cut in the middle of the key.
        format!("the header was Bearer {}...", &KEY[..6]),
    ] {
        let out = scrub(&text);
        assert!(out.contains(REDACTED), "{text} -> {out}");
        for w in KEY.as_bytes().windows(FRAGMENT) {
            let w = std::str::from_utf8(w).unwrap();
            assert!(!out.contains(w), "{text} -> {out}: still has {w}");
        }
        assert!(!out.contains(&KEY[..6]), "{text} -> {out}");
    }
    let masked = scrub(&format!(
        "Incorrect API key provided: sk-proj-****{}. You can find your API key at https://platform.openai.com/account/api-keys.",
        &KEY[KEY.len() - 4..]
    ));
    assert_eq!(
        masked,
        "Incorrect API key provided: [redacted] You can find your API key at https://platform.openai.com/account/api-keys."
    );
}

#[test]
fn ordinary_text_is_left_alone() {
    for text in [
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
        "rate limit reached for model gpt-4o in organization org-abc on tokens per min",
        "sk- is how keys start",
        "",
    ] {
        assert!(matches!(secrets().scrub(text), Cow::Borrowed(_)), "{text}");
    }
}

#[test]
fn short_values_are_placeholders_not_secrets() {
    let s = Secrets::new();
    s.add_key("EMPTY");
    s.add_key("ollama");
    s.add_phrase("x");
    assert!(s.is_empty());
    assert_eq!(s.scrub("EMPTY ollama x"), "EMPTY ollama x");
}

#[test]
fn urls_go_whole_and_by_their_secret_parts() {
    let s = Secrets::new();
    s.add_url("https://hooks.example.com/services/T0001/B0002/XyZsecretToken");
    s.add_url("postgres://sluice:hunter2hunter2@db.internal:5432/ledger");
    assert_eq!(
        s.scrub("posting to https://hooks.example.com/services/T0001/B0002/XyZsecretToken failed"),
        "posting to [redacted] failed"
    );
    assert_eq!(
        s.scrub("GET /services/T0001/B0002/XyZsecretToken 404"),
        "GET [redacted] 404"
    );
    assert_eq!(
        s.scrub("password hunter2hunter2 rejected"),
        "password [redacted] rejected"
    );
    // Other URLs of the same host are ordinary text.
    assert_eq!(
        s.scrub("see https://hooks.example.com/docs"),
        "see https://hooks.example.com/docs"
    );
}

#[test]
fn non_utf8_bodies_are_scrubbed_as_bytes() {
    let mut body = b"\xff\xfe Bearer ".to_vec();
    body.extend_from_slice(KEY.as_bytes());
    body.extend_from_slice(b" \xff");
    let out = secrets().scrub_bytes(&body).into_owned();
    assert_eq!(out, b"\xff\xfe Bearer [redacted] \xff");
}

#[test]
fn clones_share_the_set() {
    let s = Secrets::new();
    let provider_copy = s.clone();
    s.add_key(KEY);
    assert_eq!(provider_copy.scrub(KEY), REDACTED);
}

#[test]
fn what_a_provider_names_in_a_stream_is_scrubbed_and_what_it_generates_is_not() {
    use super::super::{Chunk, FinishReason};
    let s = secrets();
    let clean = |c: Chunk| c.scrubbed(&s);
    assert_eq!(
        clean(Chunk::Model(format!("Bearer {KEY}"))),
        Chunk::Model("Bearer [redacted]".into())
    );
    assert_eq!(
        clean(Chunk::Finish(FinishReason::Other(KEY.into()))),
        Chunk::Finish(FinishReason::Other(REDACTED.into()))
    );
    assert_eq!(
        clean(Chunk::Finish(FinishReason::StopSequence(Some(KEY.into())))),
        Chunk::Finish(FinishReason::StopSequence(Some(REDACTED.into())))
    );
    let call = |id: &str| Chunk::ToolCallDelta {
        index: 0,
        id: Some(id.into()),
        name: Some("f".into()),
        arguments: "{}".into(),
    };
    assert_eq!(clean(call(KEY)), call(REDACTED));
    // Ordinary names pass as they are.
    for c in [
        Chunk::Model("claude-sonnet-4-5-20250929".into()),
        call("toolu_01A"),
    ] {
        assert_eq!(clean(c.clone()), c);
    }
}
