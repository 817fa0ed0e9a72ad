//! Tests of `sse.rs`.
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::sample::Index;

use super::*;

static RECORDED: LazyLock<Vec<(&'static str, Vec<u8>)>> = LazyLock::new(|| {
    [
        (
            "openai/text_stop",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/recorded/openai/text_stop.sse"
            ),
        ),
        (
            "openai/tool_call",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/recorded/openai/tool_call.sse"
            ),
        ),
        (
            "openai/length",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/recorded/openai/length.sse"
            ),
        ),
        (
            "anthropic/text",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/recorded/anthropic/text.sse"
            ),
        ),
        (
            "anthropic/tool_use",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../fixtures/recorded/anthropic/tool_use.sse"
            ),
        ),
    ]
    .into_iter()
    .map(|(name, path)| (name, std::fs::read(path).expect(path)))
    .collect()
});

fn recorded(name: &str) -> &'static [u8] {
    &RECORDED.iter().find(|(n, _)| *n == name).unwrap().1
}

fn parse_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    for piece in pieces {
        parser.push(piece, &mut out).unwrap();
    }
    parser.finish(&mut out);
    out
}

fn parse(body: &[u8]) -> Vec<SseEvent> {
    parse_pieces([body])
}

/// Splits at sorted, deduplicated positions.
fn split_at<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for cut in cuts {
        pieces.push(&body[start..cut]);
        start = cut;
    }
    pieces.push(&body[start..]);
    pieces
}

/// Cut positions as (start, run): a run of consecutive cuts makes 1-byte
/// pieces, which uniform positions would almost never produce.
fn cut_strategy() -> impl Strategy<Value = Vec<(Index, usize)>> {
    proptest::collection::vec((any::<Index>(), 0usize..6), 0..48)
}

fn cut_positions(len: usize, cuts: &[(Index, usize)]) -> Vec<usize> {
    cuts.iter()
        .flat_map(|(at, run)| {
            let start = at.index(len + 1);
            start..=start + run
        })
        .collect()
}

fn ev(event: Option<&str>, data: &str) -> SseEvent {
    SseEvent {
        event: event.map(str::to_string),
        data: data.to_string(),
        id: None,
    }
}

fn data(d: &str) -> SseEvent {
    ev(None, d)
}

#[test]
fn openai_recordings_yield_one_event_per_data_line() {
    for (name, lines) in [
        ("openai/text_stop", 34),
        ("openai/tool_call", 11),
        ("openai/length", 5),
    ] {
        let events = parse(recorded(name));
        assert_eq!(events.len(), lines, "{name}");
        assert!(events.iter().all(|e| e.event.is_none() && e.id.is_none()));
        assert_eq!(events.last().unwrap().data, "[DONE]", "{name}");
        for e in &events[..events.len() - 1] {
            assert!(
                e.data.starts_with("{\"id\":\"chatcmpl-"),
                "{name}: {}",
                e.data
            );
            assert!(e.data.ends_with('}'), "{name}: {}", e.data);
        }
    }
}

#[test]
fn anthropic_recordings_keep_the_unterminated_last_event() {
    let text = [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];
    let tool_use = [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ];
    for (name, expected) in [
        ("anthropic/text", &text[..]),
        ("anthropic/tool_use", &tool_use[..]),
    ] {
        let body = recorded(name);
        assert!(
            !body.ends_with(b"\n"),
            "{name} must test the unterminated case"
        );
        let events = parse(body);
        let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap()).collect();
        assert_eq!(names, expected, "{name}");
        for e in &events {
            let ty = format!("\"type\":\"{}\"", e.event.as_deref().unwrap());
            let ty_spaced = format!("\"type\": \"{}\"", e.event.as_deref().unwrap());
            assert!(e.data.contains(&ty) || e.data.contains(&ty_spaced), "{e:?}");
        }
        assert_eq!(events.last().unwrap().data, r#"{"type":"message_stop"}"#);

        // Without finish() the last event is still pending.
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.push(body, &mut out).unwrap();
        assert_eq!(out.len(), expected.len() - 1);
        assert_eq!(
            parser.buffered_len(),
            r#"data: {"type":"message_stop"}"#.len()
        );
        parser.finish(&mut out);
        assert_eq!(out, events);
    }
}

#[test]
fn byte_by_byte_matches_whole_for_every_recording() {
    for (name, body) in RECORDED.iter() {
        let whole = parse(body);
        let bytewise = parse_pieces(body.chunks(1));
        assert_eq!(bytewise, whole, "{name}");
    }
}

#[test]
fn comments_and_unknown_fields_are_ignored() {
    let body = b": keep-alive\n:\nfoo: bar\nretry: 1000\ndata: x\n: mid-event comment\n\n";
    assert_eq!(parse(body), vec![data("x")]);
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    let body = b"data: first\ndata:second\ndata:  third\ndata\ndata:\n\n";
    assert_eq!(parse(body), vec![data("first\nsecond\n third\n\n")]);
}

#[test]
fn field_value_forms() {
    // No colon: the whole line is the name and the value is empty.
    assert_eq!(parse(b"data\n\n"), vec![data("")]);
    // Only one leading space is stripped; a colon inside the value stays.
    assert_eq!(parse(b"data:  a: b\n\n"), vec![data(" a: b")]);
    assert_eq!(parse(b"data:a:b\n\n"), vec![data("a:b")]);
    // Field names are case-sensitive.
    assert_eq!(parse(b"Data: x\n\n"), vec![]);
}

#[test]
fn events_without_data_are_not_dispatched() {
    let body = b"event: ping\n\nid: 7\n\nretry: 5\n\nevent: real\ndata: y\n\n";
    let events = parse(body);
    // The event type does not leak from the dropped event into the next.
    assert_eq!(
        events,
        vec![SseEvent {
            event: Some("real".into()),
            data: "y".into(),
            id: Some("7".into()),
        }]
    );
}

#[test]
fn event_type_resets_after_dispatch_and_id_persists() {
    let body = b"event: a\nid: 1\ndata: x\n\ndata: y\n\nid\ndata: z\n\nid: a\0b\ndata: w\n\n";
    assert_eq!(
        parse(body),
        vec![
            SseEvent {
                event: Some("a".into()),
                data: "x".into(),
                id: Some("1".into())
            },
            SseEvent {
                event: None,
                data: "y".into(),
                id: Some("1".into())
            },
            data("z"),
            // An id containing NUL is ignored.
            data("w"),
        ]
    );
}

#[test]
fn empty_event_name_means_none() {
    assert_eq!(parse(b"event:\ndata: x\n\n"), vec![data("x")]);
}

#[test]
fn line_endings_cr_crlf_and_mixed() {
    let expected = vec![ev(Some("e"), "a\nb"), data("c")];
    assert_eq!(
        parse(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r"),
        expected
    );
    assert_eq!(
        parse(b"event: e\r\ndata: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n"),
        expected
    );
    assert_eq!(
        parse(b"event: e\ndata: a\r\ndata: b\r\n\rdata: c\n\r\n"),
        expected
    );
}

#[test]
fn crlf_split_between_cr_and_lf() {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    parser.push(b"data: a\r", &mut out).unwrap();
    parser.push(b"", &mut out).unwrap();
    // This LF ends "data: a", it is not an empty line.
    parser.push(b"\n", &mut out).unwrap();
    assert!(out.is_empty());
    parser.push(b"data: b\r", &mut out).unwrap();
    parser.push(b"\r", &mut out).unwrap();
    assert_eq!(out, vec![data("a\nb")]);
}

#[test]
fn unterminated_body_is_flushed_by_finish() {
    assert_eq!(parse(b"data: x"), vec![data("x")]);
    assert_eq!(parse(b"data: x\n"), vec![data("x")]);
    assert_eq!(parse(b"data: x\r"), vec![data("x")]);
    assert_eq!(parse(b"data: x\ndata: y"), vec![data("x\ny")]);
    assert_eq!(parse(b"event: only\n"), vec![]);
    // finish() does not duplicate an already dispatched event.
    assert_eq!(parse(b"data: x\n\n"), vec![data("x")]);
}

#[test]
fn empty_body_and_blank_lines() {
    assert_eq!(parse(b""), vec![]);
    assert_eq!(parse(b"\n\n\r\n\r"), vec![]);
    assert_eq!(parse_pieces([&b""[..], b"", b""]), vec![]);
}

#[test]
fn bom_is_stripped_only_at_stream_start() {
    assert_eq!(parse(b"\xEF\xBB\xBFdata: x\n\n"), vec![data("x")]);
    // Split inside the BOM.
    assert_eq!(
        parse_pieces([&b"\xEF"[..], b"\xBB", b"\xBFdata: x\n\n"]),
        vec![data("x")]
    );
    // A BOM then a blank line: still only one BOM is stripped.
    assert_eq!(
        parse(b"\xEF\xBB\xBF\ndata: x\n\n\xEF\xBB\xBFdata: y\n\n"),
        vec![data("x")]
    );
    // Only one BOM is removed; a second makes the field name unknown.
    assert_eq!(parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n"), vec![]);
    // A BOM later in a value is content.
    assert_eq!(parse(b"data: \xEF\xBB\xBFx\n\n"), vec![data("\u{FEFF}x")]);
}

#[test]
fn invalid_utf8_is_decoded_lossily() {
    assert_eq!(
        parse(b"data: a\xFFb\xC3\n\n"),
        vec![data("a\u{FFFD}b\u{FFFD}")]
    );
}

#[test]
fn multibyte_character_split_across_pushes() {
    let body = "data: h\u{e9}llo \u{1F600}\n\n".as_bytes();
    let expected = vec![data("h\u{e9}llo \u{1F600}")];
    for cut in 0..=body.len() {
        assert_eq!(
            parse_pieces([&body[..cut], &body[cut..]]),
            expected,
            "cut {cut}"
        );
    }
}

#[test]
fn line_at_the_limit_is_accepted() {
    let mut body = b"data: ".to_vec();
    body.resize(MAX_LINE, b'x');
    body.extend_from_slice(b"\n\n");
    let events = parse(&body);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.len(), MAX_LINE - 6);
    // Same when it arrives in pieces.
    assert_eq!(parse_pieces(body.chunks(4096)), events);
}

#[test]
fn oversize_line_is_an_error() {
    let err = SseError::LineTooLong;
    assert_eq!(
        err.to_string(),
        "upstream sse line longer than 1048576 bytes"
    );

    // In one push, terminated.
    let mut body = b"data: ok\n\ndata: ".to_vec();
    body.resize(body.len() + MAX_LINE, b'x');
    body.extend_from_slice(b"\n\n");
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    assert_eq!(parser.push(&body, &mut out), Err(err));
    assert_eq!(out, vec![data("ok")]);

    // Unterminated, in small pieces: fails as soon as the limit is passed.
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let piece = [b'x'; 4096];
    let mut pushed = 0;
    let res = loop {
        if let Err(e) = parser.push(&piece, &mut out) {
            break e;
        }
        pushed += piece.len();
        assert!(pushed <= MAX_LINE);
    };
    assert_eq!(res, err);
    // Memory is released and the error is sticky.
    assert_eq!(parser.buffered_len(), 0);
    assert_eq!(parser.push(b"\n\ndata: x\n\n", &mut out), Err(err));
    parser.finish(&mut out);
    assert!(out.is_empty());
}

#[test]
fn oversize_event_is_an_error() {
    let line = [b"data: ".as_slice(), &[b'x'; 1000], b"\n"].concat();
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    let mut res = Ok(());
    for _ in 0..=MAX_EVENT / 1000 {
        res = parser.push(&line, &mut out);
        if res.is_err() {
            break;
        }
    }
    assert_eq!(res, Err(SseError::EventTooLong));
    assert!(out.is_empty());
    assert_eq!(
        super::super::ProviderError::from(SseError::EventTooLong).to_string(),
        "provider sent malformed data: upstream sse event data longer than 4194304 bytes"
    );
    assert_eq!(
        SseError::EventTooLong.to_string(),
        "upstream sse event data longer than 4194304 bytes"
    );
}

#[test]
fn buffered_len_counts_the_unterminated_line() {
    let mut parser = SseParser::new();
    let mut out = Vec::new();
    parser.push(b"data: abc", &mut out).unwrap();
    assert_eq!(parser.buffered_len(), 9);
    parser.push(b"\n", &mut out).unwrap();
    assert_eq!(parser.buffered_len(), 0);
}

proptest! {
    #[test]
    fn recordings_split_anywhere_match_whole(
        file in 0..5usize,
        cuts in cut_strategy(),
    ) {
        let body = &RECORDED[file].1;
        let cuts = cut_positions(body.len(), &cuts);
        prop_assert_eq!(parse_pieces(split_at(body, &cuts)), parse(body));
    }

    #[test]
    fn crlf_and_cr_endings_match_lf(
        file in 0..5usize,
        cr_only in any::<bool>(),
        cuts in cut_strategy(),
    ) {
        let body = &RECORDED[file].1;
        let eol: &[u8] = if cr_only { b"\r" } else { b"\r\n" };
        let converted: Vec<u8> = body
            .iter()
            .flat_map(|b| if *b == b'\n' { eol } else { std::slice::from_ref(b) })
            .copied()
            .collect();
        let cuts = cut_positions(converted.len(), &cuts);
        prop_assert_eq!(parse_pieces(split_at(&converted, &cuts)), parse(body));
    }

    #[test]
    fn utf8_data_round_trips_split_anywhere(
        events in proptest::collection::vec(
            (
                proptest::option::of("[^\r\n]{1,12}"),
                proptest::collection::vec("[^\r\n]{0,24}", 1..4),
            ),
            0..6,
        ),
        crlf in any::<bool>(),
        cuts in cut_strategy(),
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut body = String::new();
        let mut expected = Vec::new();
        for (event, lines) in &events {
            if let Some(name) = event {
                body.push_str(&format!("event: {name}{eol}"));
            }
            for line in lines {
                body.push_str(&format!("data: {line}{eol}"));
            }
            body.push_str(eol);
            expected.push(SseEvent {
                event: event.clone(),
                data: lines.join("\n"),
                id: None,
            });
        }
        let cuts = cut_positions(body.len(), &cuts);
        prop_assert_eq!(parse_pieces(split_at(body.as_bytes(), &cuts)), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_split_invariant(
        body in proptest::collection::vec(
            prop_oneof![
                Just(b'\n'),
                Just(b'\r'),
                Just(b':'),
                Just(b' '),
                any::<u8>(),
            ],
            0..256,
        ),
        cuts in cut_strategy(),
    ) {
        let cuts = cut_positions(body.len(), &cuts);
        prop_assert_eq!(parse_pieces(split_at(&body, &cuts)), parse(&body));
    }
}
