//! Hostile upstream faults (issue 17), on both wires: the bytes the mock
//! sends for huge, endless and many tool calls, absurd usage, key echo,
//! text after the finish, slow drip, reasoning and refusal deltas.

mod common;

use std::time::Duration;

use common::{Client, T, json_events};
use serde_json::{Value, json};
use sluice_testkit::{Fault, MockProvider, Reply, Script};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Wire {
    OpenAi,
    Anthropic,
}

const BOTH: [Wire; 2] = [Wire::OpenAi, Wire::Anthropic];

fn text(wire: Wire, words: &[&str]) -> Reply {
    match wire {
        Wire::OpenAi => Reply::text(words),
        Wire::Anthropic => Reply::anthropic_text(words),
    }
}

/// Posts a streaming request on `wire`'s path with its key header.
async fn request(mock: &MockProvider, wire: Wire) -> Client {
    let mut c = Client::connect(mock.addr()).await;
    let (path, key) = match wire {
        Wire::OpenAi => ("/v1/chat/completions", "Authorization: Bearer sk-live-123"),
        Wire::Anthropic => ("/v1/messages", "x-api-key: sk-ant-456"),
    };
    let body = json!({"model": "m", "max_tokens": 16, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n{key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.send_raw(req.as_bytes()).await;
    c
}

async fn stream(reply: Reply, wire: Wire) -> Vec<u8> {
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let mut c = request(&mock, wire).await;
    assert_eq!(c.read_head().await.unwrap().status, 200);
    c.read_body().await.unwrap()
}

/// The tool-call argument text of every event, by call index.
fn arguments(events: &[Value]) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::new();
    let mut add = |i: u64, s: &str| match out.iter_mut().find(|(k, _)| *k == i) {
        Some((_, acc)) => acc.push_str(s),
        None => out.push((i, s.to_owned())),
    };
    for e in events {
        for tc in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap();
            add(i, tc["function"]["arguments"].as_str().unwrap_or(""));
        }
        if e["type"] == "content_block_start" && e["content_block"]["type"] == "tool_use" {
            add(e["index"].as_u64().unwrap(), "");
        }
        if let Some(p) = e["delta"]["partial_json"].as_str() {
            add(e["index"].as_u64().unwrap(), p);
        }
    }
    out
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str() {
            Some(t) => t.to_owned(),
            None if e["choices"] == json!([]) => "usage".into(),
            None => match e["choices"][0]["finish_reason"].as_str() {
                Some(f) => format!("finish:{f}"),
                None => "chunk".into(),
            },
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn huge_tool_arguments_are_exactly_n_bytes_in_fragments() {
    for wire in BOTH {
        let reply = text(wire, &["unused"]).fault(Fault::HugeToolArguments {
            name: "lookup_order".into(),
            bytes: 100_000,
            fragment: 1000,
        });
        let body = stream(reply, wire).await;
        let events = json_events(&body);
        let args = arguments(&events);
        assert_eq!(args.len(), 1, "{wire:?}: one call");
        let a = &args[0].1;
        assert_eq!(a.len(), 100_000, "{wire:?}");
        assert!(a.starts_with("{\"pad\":\"xxx") && a.ends_with("xx\"}"));
        let v: Value = serde_json::from_str(a).unwrap();
        assert_eq!(v["pad"].as_str().unwrap().len(), 100_000 - 10);
        let k = kinds(&events);
        match wire {
            Wire::OpenAi => {
                assert_eq!(k.len(), 1 + 100 + 2, "start, 100 fragments, finish, usage");
                assert_eq!(k[101..], ["finish:tool_calls", "usage"]);
                assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
                assert_eq!(
                    events[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
                    "lookup_order"
                );
            }
            Wire::Anthropic => {
                assert_eq!(k.len(), 2 + 100 + 3);
                assert_eq!(
                    k[102..],
                    ["content_block_stop", "message_delta", "message_stop"]
                );
                assert_eq!(events[103]["delta"]["stop_reason"], "tool_use");
            }
        }
    }
    // Below 10 bytes: spaces.
    let reply = Reply::text(&["x"]).fault(Fault::HugeToolArguments {
        name: "t".into(),
        bytes: 4,
        fragment: 1,
    });
    let args = arguments(&json_events(&stream(reply, Wire::OpenAi).await));
    assert_eq!(args[0].1, "    ");
}

/// Reads `n` chunks of an endless reply, then leaves; the mock never sent
/// a terminator and saw the client go.
async fn read_endless(reply: Reply, wire: Wire, n: usize) -> Vec<Value> {
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let mut c = request(&mock, wire).await;
    c.read_head().await.unwrap();
    let mut body = Vec::new();
    for _ in 0..n {
        let chunk = c.read_chunk().await.unwrap().expect("never the last chunk");
        body.extend_from_slice(&chunk);
    }
    drop(c);
    let closed = mock.journal().wait_closed(0, T).await;
    assert!(closed.is_some(), "{wire:?}: the mock saw the client leave");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(!text.contains("[DONE]") && !text.contains("message_stop"));
    json_events(&body)
}

#[tokio::test(start_paused = true)]
async fn endless_tool_arguments_never_finish() {
    for wire in BOTH {
        let reply = text(wire, &["unused"]).fault(Fault::EndlessToolArguments {
            name: "lookup_order".into(),
            fragment: 64,
        });
        let events = read_endless(reply, wire, 3000).await;
        let args = arguments(&events);
        assert_eq!(args.len(), 1);
        assert!(args[0].1.starts_with("{\"pad\":\"xxxx"));
        assert!(args[0].1.len() > 2900 * 64, "{wire:?}: {}", args[0].1.len());
        let k = kinds(&events);
        assert!(!k.iter().any(|k| k.starts_with("finish") || k == "usage"));
        assert!(!k.iter().any(|k| k == "message_delta"));
    }
}

#[tokio::test(start_paused = true)]
async fn many_tool_calls_use_distinct_indexes() {
    for wire in BOTH {
        let reply = text(wire, &["unused"]).fault(Fault::ManyToolCalls {
            name: "lookup_order".into(),
            count: 300,
        });
        let events = json_events(&stream(reply, wire).await);
        let args = arguments(&events);
        assert_eq!(args.len(), 300, "{wire:?}");
        for (n, (i, a)) in args.iter().enumerate() {
            assert_eq!((*i, a.as_str()), (n as u64, "{}"));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn absurd_usage_replaces_the_reported_counts() {
    let fault = Fault::AbsurdUsage {
        prompt: Some(-5),
        completion: Some(i128::from(u64::MAX)),
    };
    let body = stream(Reply::text(&["a", "b"]).fault(fault.clone()), Wire::OpenAi).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("\"usage\":{\"completion_tokens\":18446744073709551615,\"prompt_tokens\":-5,\"total_tokens\":18446744073709551610}"),
        "{text}"
    );
    let body = stream(
        Reply::anthropic_text(&["a", "b"]).fault(fault),
        Wire::Anthropic,
    )
    .await;
    let events = json_events(&body);
    assert_eq!(
        events[0]["message"]["usage"],
        json!({"input_tokens": -5, "output_tokens": u64::MAX})
    );
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"], json!({"output_tokens": u64::MAX}));
    // One count only: the other stays as reported.
    let fault = Fault::AbsurdUsage {
        prompt: None,
        completion: Some(10_000_000),
    };
    let body = stream(Reply::text(&["a"]).fault(fault), Wire::OpenAi).await;
    let usage = json_events(&body).last().unwrap()["usage"].clone();
    assert_eq!(
        usage,
        json!({"prompt_tokens": 10, "completion_tokens": 10_000_000, "total_tokens": 10_000_010})
    );
}

#[tokio::test(start_paused = true)]
async fn key_echo_quotes_the_key_header_in_status_bodies_and_stream_errors() {
    for (wire, key) in [
        (Wire::OpenAi, "Bearer sk-live-123"),
        (Wire::Anthropic, "sk-ant-456"),
    ] {
        let reply = text(wire, &["x"]).fault(Fault::EchoKeyStatus(401));
        let mock = MockProvider::start(Script::single(reply)).await.unwrap();
        let mut c = request(&mock, wire).await;
        let head = c.read_head().await.unwrap();
        assert_eq!(head.status, 401);
        let len = head.header("content-length").unwrap().parse().unwrap();
        let body = c.read_exact_body(len).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let message = match wire {
            Wire::OpenAi => v["error"]["message"].as_str().unwrap().to_owned(),
            Wire::Anthropic => {
                assert_eq!(v["error"]["type"], "authentication_error");
                v["error"]["message"].as_str().unwrap().to_owned()
            }
        };
        assert!(message.contains(key), "{wire:?}: {message}");

        let reply = text(wire, &["a", "b"]).fault(Fault::EchoKeyEventAfter(2));
        let body = stream(reply, wire).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        let last = text.trim_end().rsplit("\n\n").next().unwrap().to_owned();
        assert!(last.contains(key), "{wire:?}: {last}");
        if wire == Wire::Anthropic {
            assert!(last.starts_with("event: error\ndata: "), "{last}");
        }
        assert_eq!(json_events(&body).len(), 3, "two events, then the error");
    }
}

#[tokio::test(start_paused = true)]
async fn text_after_finish_n_times_then_the_terminator_or_forever() {
    let after = |count| Fault::TextAfterFinish {
        text: " more".into(),
        count,
    };
    let body = stream(Reply::text(&["a"]).fault(after(Some(3))), Wire::OpenAi).await;
    let k = kinds(&json_events(&body));
    assert_eq!(
        k,
        [
            "chunk",
            "chunk",
            "finish:stop",
            "usage",
            "chunk",
            "chunk",
            "chunk"
        ]
    );
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
    let body = stream(
        Reply::anthropic_text(&["a"]).fault(after(Some(2))),
        Wire::Anthropic,
    )
    .await;
    let k = kinds(&json_events(&body));
    assert_eq!(
        k[k.len() - 4..],
        [
            "message_delta",
            "content_block_delta",
            "content_block_delta",
            "message_stop"
        ]
    );
    for wire in BOTH {
        let events = read_endless(text(wire, &["a"]).fault(after(None)), wire, 500).await;
        let k = kinds(&events);
        let finish = k
            .iter()
            .position(|k| k == "finish:stop" || k == "message_delta")
            .unwrap();
        assert!(k.len() - finish > 400, "{wire:?}: {k:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn slow_drip_writes_one_byte_per_interval() {
    let reply = Reply::text(&["a"]).fault(Fault::SlowDrip {
        head: Duration::from_secs(1),
        body: Duration::from_millis(10),
    });
    let mock = MockProvider::start(Script::single(reply.clone()))
        .await
        .unwrap();
    let mut c = request(&mock, Wire::OpenAi).await;
    let t0 = Instant::now();
    // The first byte at once, then one a second.
    let mut first = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut first)
        .await
        .unwrap();
    assert_eq!(&first, b"H");
    assert!(t0.elapsed() < Duration::from_millis(5));
    let mut two = [0u8; 2];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut two)
        .await
        .unwrap();
    let took = t0.elapsed();
    assert_eq!(&two, b"TT");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2005),
        "{took:?}"
    );
    let rec = mock.journal().wait_reply_done(0, T * 10).await.unwrap();
    let head_len = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                    transfer-encoding: chunked\r\ncache-control: no-cache\r\n\
                    x-request-id: req_mock_0\r\n\r\n"
        .len() as u32;
    let headers = rec.headers_sent_at.unwrap() - rec.received_at;
    assert_eq!(headers, Duration::from_secs(1) * (head_len - 1));
    // The body: its framed bytes 10 ms apart (a first byte after each write).
    let body = rec.completed_at.unwrap() - rec.headers_sent_at.unwrap();
    assert!(
        body >= Duration::from_millis(10) * (rec.bytes_sent as u32),
        "{body:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn reasoning_and_refusal_deltas_come_before_the_content() {
    let reply = Reply::text(&["a"])
        .fault(Fault::Reasoning {
            text: "hmm".into(),
            count: 2,
        })
        .fault(Fault::Refusal {
            text: "no".into(),
            count: 1,
        });
    let events = json_events(&stream(reply, Wire::OpenAi).await);
    let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
    assert_eq!(deltas[0]["role"], "assistant");
    assert_eq!(*deltas[1], json!({"refusal": "no"}));
    assert_eq!(*deltas[2], json!({"reasoning_content": "hmm"}));
    assert_eq!(*deltas[3], json!({"reasoning_content": "hmm"}));
    assert_eq!(deltas[4]["content"], "a");

    let reply = Reply::anthropic_text(&["a"]).fault(Fault::Reasoning {
        text: "hmm".into(),
        count: 2,
    });
    let events = json_events(&stream(reply, Wire::Anthropic).await);
    assert_eq!(events[1]["content_block"]["type"], "thinking");
    assert_eq!(events[1]["index"], 0);
    assert_eq!(
        events[2]["delta"],
        json!({"type": "thinking_delta", "thinking": "hmm"})
    );
    assert_eq!(events[4]["delta"]["type"], "signature_delta");
    assert_eq!(events[5]["type"], "content_block_stop");
    let text_start = events
        .iter()
        .find(|e| e["content_block"]["type"] == "text")
        .unwrap();
    assert_eq!(text_start["index"], 1, "the text block moved up one");
    let text_delta = events
        .iter()
        .find(|e| e["delta"]["type"] == "text_delta")
        .unwrap();
    assert_eq!(text_delta["index"], 1);
}
