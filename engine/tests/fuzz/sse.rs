//! The upstream SSE parser (`provider/sse.rs`): any bytes, any split, and
//! structured streams checked against a reference reading of the WHATWG
//! rules; lines and events at and past the parser's limits.

use proptest::prelude::*;
use sluice::provider::sse::{MAX_EVENT, MAX_LINE, SseError, SseEvent, SseParser};

/// What feeding a whole body gives: the events, and the error if any.
pub type Outcome = (Vec<SseEvent>, Option<SseError>);

/// Feeds `body` cut at `cuts` (positions, any order, clamped), then
/// finishes; asserts the memory bound after every push.
pub fn feed(body: &[u8], cuts: &[usize]) -> Result<Outcome, TestCaseError> {
    let mut points: Vec<usize> = cuts.iter().map(|&c| c.min(body.len())).collect();
    points.push(0);
    points.push(body.len());
    points.sort_unstable();
    points.dedup();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for w in points.windows(2) {
        if let Err(e) = parser.push(&body[w[0]..w[1]], &mut events) {
            // Errors are sticky: a later push says the same.
            prop_assert_eq!(parser.push(b"data: x\n\n", &mut events), Err(e));
            check_events(&events)?;
            return Ok((events, Some(e)));
        }
        prop_assert!(
            parser.buffered_len() <= MAX_LINE,
            "line buffer past its limit"
        );
    }
    parser.finish(&mut events);
    check_events(&events)?;
    Ok((events, None))
}

fn check_events(events: &[SseEvent]) -> Result<(), TestCaseError> {
    for ev in events {
        // The last event may take one more line (see `finish`).
        prop_assert!(
            ev.data.len() <= MAX_EVENT + MAX_LINE,
            "event data past its limit"
        );
        prop_assert!(
            ev.event.as_deref() != Some(""),
            "an empty event name is None"
        );
        prop_assert!(ev.id.as_deref() != Some(""), "an empty id is None");
    }
    Ok(())
}

/// Checks one body: every split in `cuts_list` gives what the whole body gives.
pub fn check_splits(body: &[u8], cuts_list: &[Vec<usize>]) -> Result<Outcome, TestCaseError> {
    let whole = feed(body, &[])?;
    for cuts in cuts_list {
        let split = feed(body, cuts)?;
        prop_assert_eq!(
            &split,
            &whole,
            "a split changed the result (cuts {:?})",
            cuts
        );
    }
    Ok(whole)
}

/// The WHATWG event-stream interpretation, written plainly over the whole
/// body, with Sluice's one deviation (an unterminated last event is
/// dispatched) and no limits.
pub fn reference(body: &[u8]) -> Vec<SseEvent> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                lines.push(&body[start..i]);
                i += if body.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            b'\n' => {
                lines.push(&body[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    let tail = &body[start..];
    let (mut data, mut event, mut id) = (String::new(), String::new(), String::new());
    let mut out = Vec::new();
    let mut dispatch = |data: &mut String, event: &mut String, id: &String| {
        if !data.is_empty() {
            data.pop();
            out.push(SseEvent {
                event: (!event.is_empty()).then(|| event.clone()),
                data: std::mem::take(data),
                id: (!id.is_empty()).then(|| id.clone()),
            });
        }
        event.clear();
    };
    let field = |line: &[u8], data: &mut String, event: &mut String, id: &mut String| {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (
                &line[..c],
                line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..]),
            ),
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                data.push_str(&value);
                data.push('\n');
            }
            b"event" => *event = value.into_owned(),
            b"id" if !value.contains('\0') => *id = value.into_owned(),
            _ => {}
        }
    };
    for line in lines {
        if line.is_empty() {
            dispatch(&mut data, &mut event, &id);
        } else {
            field(line, &mut data, &mut event, &mut id);
        }
    }
    if !tail.is_empty() {
        field(tail, &mut data, &mut event, &mut id);
    }
    dispatch(&mut data, &mut event, &id);
    out
}

/// Bytes that mean something to the parser, and some that do not.
fn sse_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => any::<u8>(),
        2 => Just(b'\n'),
        2 => Just(b'\r'),
        2 => Just(b':'),
        1 => Just(b' '),
        1 => Just(0u8),
    ]
}

fn splits(len: usize) -> impl Strategy<Value = Vec<Vec<usize>>> {
    proptest::collection::vec(proptest::collection::vec(0..=len, 0..16), 1..4)
}

/// One line of a structured stream, with its terminator.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        4 => Just(b"data".to_vec()),
        2 => Just(b"event".to_vec()),
        2 => Just(b"id".to_vec()),
        1 => Just(b"retry".to_vec()),
        1 => Just(Vec::new()),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no eol", |b| *b != b'\n' && *b != b'\r'), 1..8),
    ];
    let sep = prop_oneof![
        Just(&b": "[..]),
        Just(&b":"[..]),
        Just(&b""[..]),
        Just(&b"::"[..])
    ];
    let value = prop_oneof![
        3 => "[^\r\n]{0,24}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>().prop_filter("no eol", |b| *b != b'\n' && *b != b'\r'), 0..24),
        1 => Just(b"\xEF\xBB\xBF".to_vec()),
        1 => Just(b"x\0y".to_vec()),
    ];
    let eol = prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])];
    let blank = prop_oneof![Just(false), Just(false), Just(true)];
    (name, sep, value, eol, blank).prop_map(|(name, sep, value, eol, blank)| {
        let mut l = if blank {
            Vec::new()
        } else {
            [name, sep.to_vec(), value].concat()
        };
        l.extend_from_slice(eol);
        l
    })
}

fn structured_body() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        proptest::collection::vec(line(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(bom, lines, cut_last)| {
            let mut body = if bom {
                b"\xEF\xBB\xBF".to_vec()
            } else {
                Vec::new()
            };
            for l in lines {
                body.extend(l);
            }
            if cut_last {
                // An unterminated last line.
                while body.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    body.pop();
                }
            }
            body
        })
}

#[test]
fn any_bytes_any_split_same_events() {
    let strategy = proptest::collection::vec(sse_byte(), 0..600).prop_flat_map(|body| {
        let len = body.len();
        (Just(body), splits(len))
    });
    crate::check(file!(), 1, strategy, |(body, cuts)| {
        let (events, err) = check_splits(&body, &cuts)?;
        // Short bodies are within the limits: never an error, and the
        // reference reading agrees.
        prop_assert_eq!(err, None);
        prop_assert_eq!(events, reference(&body));
        Ok(())
    });
}

#[test]
fn structured_streams_match_the_reference_under_any_split() {
    let strategy = structured_body().prop_flat_map(|body| {
        let len = body.len();
        (Just(body), splits(len))
    });
    crate::check(file!(), 1, strategy, |(body, cuts)| {
        let (events, err) = check_splits(&body, &cuts)?;
        prop_assert_eq!(err, None);
        prop_assert_eq!(events, reference(&body));
        Ok(())
    });
}

/// A line of `MAX_LINE + delta` bytes: refused exactly when it is longer
/// than the limit, whatever the pieces it arrives in.
#[test]
fn huge_lines_are_refused_exactly_past_the_limit() {
    let strategy = (
        -3i64..=3,
        prop_oneof![Just(&b"\n"[..]), Just(&b"\r"[..]), Just(&b"\r\n"[..])],
        proptest::collection::vec(1usize..(MAX_LINE + 8), 0..6),
        prop_oneof![Just(b'a'), Just(b':'), Just(0xFFu8)],
    );
    crate::check(file!(), 8, strategy, |(delta, eol, cuts, fill)| {
        let len = (MAX_LINE as i64 + delta) as usize;
        let mut body = b"data:".to_vec();
        body.resize(len, fill);
        body.extend_from_slice(eol);
        body.extend_from_slice(b"\ndata: after\n\n");
        let (events, err) = feed(&body, &cuts)?;
        if len > MAX_LINE {
            prop_assert_eq!(err, Some(SseError::LineTooLong));
        } else {
            prop_assert_eq!(err, None);
            // After a lone CR the next LF belongs to it: no blank line, so
            // "after" joins the long line's event.
            let last = events.last().map(|e| e.data.as_str()).unwrap_or_default();
            prop_assert!(
                last.ends_with("after"),
                "the event after the long line is lost"
            );
        }
        Ok(())
    });
}

/// Many short `data:` lines with no blank line: refused once the event's
/// data passes its limit, however the lines are cut.
#[test]
fn events_grow_only_to_their_limit() {
    let strategy = (
        1usize..4096,
        -2i64..=2,
        proptest::collection::vec(1usize..(MAX_EVENT + 64), 0..6),
    );
    crate::check(file!(), 8, strategy, |(line_len, delta, cuts)| {
        // Each line adds `line_len` bytes of data plus a newline.
        let per_line = line_len + 1;
        let lines = (MAX_EVENT as i64 / per_line as i64 + delta).max(1) as usize;
        let mut line = b"data:".to_vec();
        line.resize(5 + line_len, b'x');
        line.push(b'\n');
        let mut body = line.repeat(lines);
        body.push(b'\n');
        let (events, err) = feed(&body, &cuts)?;
        if lines * per_line > MAX_EVENT {
            prop_assert_eq!(err, Some(SseError::EventTooLong));
        } else {
            prop_assert_eq!(err, None);
            prop_assert_eq!(events.len(), 1);
            prop_assert!(
                events[0].data.len() == lines * per_line - 1,
                "event data of the wrong length"
            );
        }
        Ok(())
    });
}
