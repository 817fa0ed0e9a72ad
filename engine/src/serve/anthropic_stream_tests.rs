use super::*;
use crate::run::{CountedBy, StartEvent, ToolCallDelta};

fn start() -> Event {
    Event::Start(Box::new(StartEvent {
        request_id: "r".into(),
        pipeline: "p".into(),
        provider: "x".into(),
        model: "m-1".into(),
        downgraded_from: None,
        prompt_tokens: 7,
    }))
}

fn usage() -> Event {
    Event::Usage(Box::new(UsageReport {
        prompt_tokens: 100,
        completion_tokens: 9,
        total_tokens: 109,
        estimated: false,
        counted_by: CountedBy::Provider,
        cost_micros: 0,
        cost_usd: "0".into(),
        cache_read_tokens: 60,
        cache_write_tokens: 10,
        cache_write_1h_tokens: 4,
    }))
}

fn call(index: u32, id: Option<&str>, args: &str) -> Event {
    Event::ToolCallDelta(Box::new(ToolCallDelta {
        index,
        id: id.map(str::to_string),
        name: id.map(|_| format!("tool{index}")),
        arguments: args.into(),
    }))
}

/// Every event, encoded, with the assembled message.
fn run(events: Vec<Event>) -> (Vec<Value>, Option<Value>) {
    let mut enc = MessagesEncoder::new("msg_r".into(), "p".into());
    let mut out = Vec::new();
    for ev in events {
        enc.on(ev, &mut out);
    }
    let mut assembled = Assembled::default();
    for (name, data) in &out {
        assert_eq!(data["type"], *name);
        assembled.apply(data.clone());
    }
    (out.into_iter().map(|(_, d)| d).collect(), assembled.message)
}

fn shape(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["index"].as_u64() {
            Some(i) => format!("{}:{i}", e["type"].as_str().unwrap()),
            None => e["type"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[test]
fn thinking_then_text_then_tools_get_increasing_indexes() {
    let (events, message) = run(vec![
        start(),
        Event::Reasoning("let me ".into()),
        Event::Reasoning("see".into()),
        Event::ReasoningSignature("sig".into()),
        Event::Delta("Hi".into()),
        Event::Delta(" there".into()),
        call(0, Some("c0"), "{\"a\""),
        call(0, None, ":1}"),
        call(1, Some("c1"), ""),
        Event::KeepAlive,
        usage(),
        Event::Done {
            finish_reason: "tool_calls".into(),
        },
    ]);
    assert_eq!(
        shape(&events),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_delta:1",
            "content_block_delta:1",
            "content_block_stop:1",
            "content_block_start:2",
            "content_block_delta:2",
            "content_block_delta:2",
            // Call 1 started while call 0's block was open: held, and
            // sent whole once the calls are over.
            "ping",
            "content_block_stop:2",
            "content_block_start:3",
            "content_block_stop:3",
            "message_delta",
            "message_stop",
        ]
    );
    let m = message.unwrap();
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "let me see", "signature": "sig"},
            {"type": "text", "text": "Hi there"},
            {"type": "tool_use", "id": "c0", "name": "tool0", "input": {"a": 1}},
            {"type": "tool_use", "id": "c1", "name": "tool1", "input": {}},
        ])
    );
    assert_eq!(m["stop_reason"], "tool_use");
    assert_eq!(m["model"], "m-1");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 30, "output_tokens": 9, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 10,
               "cache_creation": {"ephemeral_5m_input_tokens": 6, "ephemeral_1h_input_tokens": 4}})
    );
}

#[test]
fn a_matched_stop_sequence_is_named_and_only_on_a_stop() {
    let (events, m) = run(vec![
        start(),
        Event::Delta("ok".into()),
        usage(),
        Event::StopSequence("END".into()),
        Event::Done {
            finish_reason: "stop".into(),
        },
    ]);
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "END"})
    );
    let m = m.unwrap();
    assert_eq!(m["stop_reason"], "stop_sequence");
    assert_eq!(m["stop_sequence"], "END");
    // Without one the stop is an end_turn with no sequence.
    let (_, m) = run(vec![
        start(),
        Event::Delta("ok".into()),
        Event::Done {
            finish_reason: "stop".into(),
        },
    ]);
    let m = m.unwrap();
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["stop_sequence"].is_null());
}

#[test]
fn stop_reasons_and_refusals() {
    for (finish, refusal, want) in [
        ("stop", false, "end_turn"),
        ("stop", true, "refusal"),
        ("length", false, "max_tokens"),
        ("content_filter", false, "refusal"),
        ("tool_calls", false, "tool_use"),
        ("pause_turn", false, "pause_turn"),
    ] {
        let body = if refusal {
            Event::Refusal("no".into())
        } else {
            Event::Delta("ok".into())
        };
        let (_, m) = run(vec![
            start(),
            body,
            usage(),
            Event::Done {
                finish_reason: finish.into(),
            },
        ]);
        let m = m.unwrap();
        assert_eq!(m["stop_reason"], want, "{finish}");
        assert_eq!(m["content"][0]["type"], "text");
    }
}

#[test]
fn a_failure_is_an_error_event_and_nothing_after() {
    let (events, _) = run(vec![
        start(),
        Event::Delta("par".into()),
        usage(),
        Event::Error {
            code: ErrorCode::TimeoutIdle,
            message: "silent".into(),
            kind: None,
        },
        Event::Done {
            finish_reason: "error".into(),
        },
    ]);
    let last = events.last().unwrap();
    assert_eq!(
        *last,
        json!({"type": "error", "error": {"type": "timeout_error", "message": "silent"}})
    );
    // A ceiling cut is an answer.
    let (events, m) = run(vec![
        start(),
        Event::Delta("par".into()),
        Event::Error {
            code: ErrorCode::TokenCeiling,
            message: "cut".into(),
            kind: None,
        },
        Event::Done {
            finish_reason: "length".into(),
        },
    ]);
    assert_eq!(events.last().unwrap()["type"], "message_stop");
    assert_eq!(m.unwrap()["stop_reason"], "max_tokens");
    // The provider's own kind of error is kept (not api_error).
    let (events, _) = run(vec![
        start(),
        Event::Delta("par".into()),
        Event::Error {
            code: ErrorCode::Upstream,
            message: "provider sent an error in the stream: overloaded_error: Overloaded".into(),
            kind: Some(crate::provider::ErrorKind::Overloaded),
        },
        Event::Done {
            finish_reason: "error".into(),
        },
    ]);
    assert_eq!(events.last().unwrap()["error"]["type"], "overloaded_error");
}

#[test]
fn reasoning_after_a_signature_opens_a_new_block() {
    let (events, m) = run(vec![
        start(),
        Event::Reasoning("a".into()),
        Event::ReasoningSignature("s1".into()),
        Event::RedactedReasoning("xx".into()),
        Event::Reasoning("b".into()),
        Event::ReasoningSignature("s2".into()),
        Event::Done {
            finish_reason: "stop".into(),
        },
    ]);
    let m = m.unwrap();
    assert_eq!(m["content"].as_array().unwrap().len(), 3);
    assert_eq!(
        m["content"][1],
        json!({"type": "redacted_thinking", "data": "xx"})
    );
    assert_eq!(m["content"][2]["signature"], "s2");
    let starts = events
        .iter()
        .filter(|e| e["type"] == "content_block_start")
        .count();
    let stops = events
        .iter()
        .filter(|e| e["type"] == "content_block_stop")
        .count();
    assert_eq!((starts, stops), (3, 3));
}

#[test]
fn interleaved_parallel_calls_lose_no_piece() {
    let (events, m) = run(vec![
        start(),
        Event::Delta("Both.".into()),
        call(0, Some("c0"), "{\"city\":"),
        call(1, Some("c1"), "{\"city\":"),
        call(0, None, "\"Oslo\"}"),
        call(1, None, "\"Rome\"}"),
        Event::Done {
            finish_reason: "tool_calls".into(),
        },
    ]);
    let m = m.unwrap();
    assert_eq!(m["content"][1]["input"], json!({"city": "Oslo"}));
    assert_eq!(m["content"][2]["input"], json!({"city": "Rome"}));
    assert_eq!(m["content"][2]["id"], "c1");
    assert_eq!(
        shape(&events)[events.len() - 6..],
        [
            "content_block_stop:1",
            "content_block_start:2",
            "content_block_delta:2",
            "content_block_stop:2",
            "message_delta",
            "message_stop"
        ]
    );
}

/// An OpenAI-compatible provider may send text between two pieces of one
/// call's arguments: the call's block stays open for the rest, and the
/// text follows the calls.
#[test]
fn text_between_pieces_of_one_call_follows_the_calls() {
    let (events, m) = run(vec![
        start(),
        Event::Delta("Checking.".into()),
        call(0, Some("c0"), "{\"city\":"),
        Event::Delta(" One moment.".into()),
        call(0, None, "\"Oslo\"}"),
        call(1, Some("c1"), "{\"city\":"),
        Event::Reasoning("and Rome".into()),
        call(1, None, "\"Rome\"}"),
        Event::Done {
            finish_reason: "tool_calls".into(),
        },
    ]);
    let m = m.unwrap();
    assert_eq!(
        m["content"],
        json!([
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "c0", "name": "tool0", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "c1", "name": "tool1", "input": {"city": "Rome"}},
            {"type": "text", "text": " One moment."},
            {"type": "thinking", "thinking": "and Rome", "signature": ""},
        ])
    );
    assert_eq!(
        shape(&events),
        [
            "message_start",
            "content_block_start:0",
            "content_block_delta:0",
            "content_block_stop:0",
            "content_block_start:1",
            "content_block_delta:1",
            "content_block_delta:1",
            "content_block_stop:1",
            "content_block_start:2",
            "content_block_delta:2",
            "content_block_stop:2",
            "content_block_start:3",
            "content_block_delta:3",
            "content_block_stop:3",
            "content_block_start:4",
            "content_block_delta:4",
            "content_block_stop:4",
            "message_delta",
            "message_stop"
        ]
    );
}

/// An Anthropic provider ends each call's block before the next block
/// starts: what comes between two calls (reasoning, text) keeps its place.
#[test]
fn blocks_a_provider_ended_keep_their_order() {
    let (events, m) = run(vec![
        start(),
        Event::Reasoning("first".into()),
        Event::ReasoningSignature("s1".into()),
        call(0, Some("c0"), "{}"),
        Event::ToolCallEnd(0),
        Event::Reasoning("between".into()),
        Event::ReasoningSignature("s2".into()),
        call(1, Some("c1"), "{\"a\":1}"),
        Event::ToolCallEnd(1),
        Event::Delta("after".into()),
        Event::Done {
            finish_reason: "tool_calls".into(),
        },
    ]);
    let m = m.unwrap();
    let kinds: Vec<&str> = m["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["thinking", "tool_use", "thinking", "tool_use", "text"]
    );
    assert_eq!(m["content"][2]["thinking"], "between");
    assert_eq!(m["content"][3]["input"], json!({"a": 1}));
    assert_eq!(shape(&events).last().unwrap(), "message_stop");
    // An end for a call whose block is not the open one changes nothing.
    let (_, m) = run(vec![
        start(),
        call(0, Some("c0"), "{\"a\":"),
        Event::ToolCallEnd(3),
        Event::Delta("held".into()),
        call(0, None, "2}"),
        Event::Done {
            finish_reason: "tool_calls".into(),
        },
    ]);
    assert_eq!(m.unwrap()["content"][0]["input"], json!({"a": 2}));
}

mod well_formed {
    use super::*;
    use proptest::prelude::*;

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            "[a-z]{1,3}".prop_map(Event::Delta),
            "[a-z]{1,3}".prop_map(Event::Refusal),
            "[a-z]{1,3}".prop_map(Event::Reasoning),
            "[a-z]{1,3}".prop_map(Event::ReasoningSignature),
            "[a-z]{1,3}".prop_map(Event::RedactedReasoning),
            Just(Event::KeepAlive),
            (0u32..3, "[a-z]{0,3}").prop_map(|(i, a)| call(i, None, &a)),
            (0u32..3).prop_map(Event::ToolCallEnd),
        ]
    }

    /// `body` as the run sends it: a call starts (with its id) the first
    /// time its index appears, and nothing more of it follows its end.
    fn as_the_run_sends(body: Vec<Event>) -> Vec<Event> {
        let mut seen = std::collections::BTreeSet::new();
        let mut ended = std::collections::BTreeSet::new();
        let mut evs = vec![start()];
        for ev in body {
            match ev {
                Event::ToolCallDelta(d) if ended.contains(&d.index) => {}
                Event::ToolCallDelta(d) => {
                    let first = seen.insert(d.index);
                    let id = format!("c{}", d.index);
                    evs.push(call(d.index, first.then_some(id.as_str()), &d.arguments));
                }
                Event::ToolCallEnd(i) if seen.contains(&i) && ended.insert(i) => {
                    evs.push(Event::ToolCallEnd(i));
                }
                Event::ToolCallEnd(_) => {}
                ev => evs.push(ev),
            }
        }
        evs
    }

    proptest! {
        /// Whatever the run sends, the stream opens one block at a time with
        /// indexes 0, 1, 2..., sends deltas only to the open block, closes
        /// every block, and ends with message_delta and message_stop.
        #[test]
        fn any_run_makes_a_well_formed_stream(body in proptest::collection::vec(event(), 0..24)) {
            let mut evs = as_the_run_sends(body);
            evs.push(Event::Done { finish_reason: "stop".into() });
            let (events, _) = run(evs);
            let mut open: Option<u64> = None;
            let mut next = 0u64;
            for e in &events {
                let index = e["index"].as_u64();
                match e["type"].as_str().unwrap() {
                    "content_block_start" => {
                        prop_assert_eq!(open, None);
                        prop_assert_eq!(index, Some(next));
                        open = index;
                        next += 1;
                    }
                    "content_block_delta" => prop_assert_eq!(open, index),
                    "content_block_stop" => {
                        prop_assert_eq!(open, index);
                        open = None;
                    }
                    "message_delta" => prop_assert_eq!(open, None),
                    _ => {}
                }
            }
            let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            prop_assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
            prop_assert_eq!(names[0], "message_start");
        }

        /// Whatever the order (text between two pieces of one call, calls
        /// interleaved), every piece arrives once: each call's arguments
        /// whole in its own block, all text and reasoning in order.
        #[test]
        fn no_piece_is_lost_or_repeated(body in proptest::collection::vec(event(), 0..32)) {
            let mut evs = as_the_run_sends(body);
            let mut args: std::collections::BTreeMap<String, String> = Default::default();
            let (mut text, mut reasoning) = (String::new(), String::new());
            for ev in &evs {
                match ev {
                    Event::ToolCallDelta(d) => args
                        .entry(format!("c{}", d.index))
                        .or_default()
                        .push_str(&d.arguments),
                    Event::Delta(t) | Event::Refusal(t) => text.push_str(t),
                    Event::Reasoning(t) => reasoning.push_str(t),
                    _ => {}
                }
            }
            evs.push(Event::Done { finish_reason: "tool_calls".into() });
            let (events, _) = run(evs);
            let mut blocks: Vec<(String, String)> = Vec::new();
            let (mut got_text, mut got_reasoning) = (String::new(), String::new());
            for e in &events {
                match e["type"].as_str().unwrap() {
                    "content_block_start" => {
                        let id = e["content_block"]["id"].as_str().unwrap_or_default();
                        blocks.push((id.to_string(), String::new()));
                    }
                    "content_block_delta" => {
                        let d = &e["delta"];
                        match d["type"].as_str().unwrap() {
                            "input_json_delta" => {
                                let i = e["index"].as_u64().unwrap() as usize;
                                blocks[i].1.push_str(d["partial_json"].as_str().unwrap());
                            }
                            "text_delta" => got_text.push_str(d["text"].as_str().unwrap()),
                            "thinking_delta" => got_reasoning.push_str(d["thinking"].as_str().unwrap()),
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            let calls: std::collections::BTreeMap<String, String> =
                blocks.into_iter().filter(|(id, _)| !id.is_empty()).collect();
            prop_assert_eq!(calls, args);
            prop_assert_eq!(got_text, text);
            prop_assert_eq!(got_reasoning, reasoning);
        }
    }
}
