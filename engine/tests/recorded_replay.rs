//! Every recorded provider stream in `fixtures/recorded/{openai,anthropic}`
//! replayed through the decoder and through the real server
//! (`/v1/chat/completions` streamed and not, `/v1/pipelines/{name}`
//! streamed and not), whole and in byte fragments. What the client gets is
//! compared with what the recording itself says: the expectations are read
//! from the recording here, by a reader independent of the engine's
//! decoders, never written down by hand.

mod common;

use std::path::PathBuf;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};
use sluice::compile::compile_sources;
use sluice::provider::anthropic_wire::AnthropicDecoder;
use sluice::provider::openai_wire::OpenAiDecoder;
use sluice::provider::sse::SseParser;
use sluice::provider::{Chunk, Usage};
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Recording, Reply, Script};

/// The recordings of real provider streams (the `_timed` copies and the
/// support set are replays of these or synthetic).
const RECORDINGS: &[&str] = &[
    "openai/text_stop.sse",
    "openai/length.sse",
    "openai/tool_call.sse",
    "openai/parallel_tool_calls.sse",
    "openai/refusal.sse",
    "openai/reasoning_openrouter.sse",
    "anthropic/text.sse",
    "anthropic/tool_use.sse",
    "anthropic/thinking.sse",
    "anthropic/padded.sse",
    "anthropic/parallel_tool_use.sse",
    "anthropic/cache_write.sse",
    "anthropic/cache_read.sse",
];

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/recorded")
        .join(name)
}

fn is_anthropic(name: &str) -> bool {
    name.starts_with("anthropic/")
}

/// What a recording says the model answered, in Chat Completions terms.
#[derive(Debug, Default, Clone, PartialEq)]
struct Answer {
    model: String,
    text: String,
    refusal: String,
    reasoning: String,
    /// `(id, name, arguments)` in index order.
    calls: Vec<(String, String, String)>,
    finish: String,
    prompt_tokens: i128,
    completion_tokens: i128,
    cache_read_tokens: i128,
    cache_write_tokens: i128,
    /// Of the writes, those for an hour, when the stream split them.
    cache_write_1h_tokens: Option<i128>,
}

impl Answer {
    fn call_mut(&mut self, slot: usize) -> &mut (String, String, String) {
        while self.calls.len() <= slot {
            self.calls.push(Default::default());
        }
        &mut self.calls[slot]
    }
}

/// `(event name, data)` of each event of the recording, split by the
/// testkit's loader (which also checks the file is valid for its wire).
/// Blocks of comments only (OpenRouter's `: OPENROUTER PROCESSING`) have
/// no data and are no event.
fn events(name: &str) -> Vec<(Option<String>, String)> {
    let rec = Recording::load(&path(name)).unwrap_or_else(|e| panic!("{e}"));
    rec.events
        .iter()
        .filter_map(|raw| {
            let text = std::str::from_utf8(raw).expect("utf-8");
            let (mut event, mut data) = (None, Vec::new());
            for line in text.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = Some(value.to_string()),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

fn int(v: &Value) -> Option<i128> {
    v.as_i64().map(i128::from)
}

/// Reads the answer straight from the recording's JSON.
fn expected(name: &str) -> Answer {
    let mut a = Answer::default();
    if is_anthropic(name) {
        let (mut input, mut read, mut write) = (0, 0, 0);
        // Anthropic numbers content blocks; tool calls are numbered in order.
        let mut tool_blocks: Vec<u64> = Vec::new();
        for (_, data) in events(name) {
            let v: Value = serde_json::from_str(&data).unwrap();
            let usage = match v["type"].as_str().unwrap() {
                "message_start" => {
                    a.model = v["message"]["model"].as_str().unwrap().into();
                    v["message"]["usage"].clone()
                }
                "content_block_start" => {
                    let block = &v["content_block"];
                    match block["type"].as_str().unwrap() {
                        "text" => a.text += block["text"].as_str().unwrap_or(""),
                        "tool_use" => {
                            tool_blocks.push(v["index"].as_u64().unwrap());
                            let call = a.call_mut(tool_blocks.len() - 1);
                            call.0 = block["id"].as_str().unwrap().into();
                            call.1 = block["name"].as_str().unwrap().into();
                        }
                        _ => {}
                    }
                    Value::Null
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    match d["type"].as_str().unwrap() {
                        "text_delta" => a.text += d["text"].as_str().unwrap(),
                        "thinking_delta" => a.reasoning += d["thinking"].as_str().unwrap(),
                        "input_json_delta" => {
                            let block = v["index"].as_u64().unwrap();
                            let slot = tool_blocks.iter().position(|b| *b == block).unwrap();
                            a.call_mut(slot).2 += d["partial_json"].as_str().unwrap_or("");
                        }
                        _ => {}
                    }
                    Value::Null
                }
                "message_delta" => {
                    a.finish = match v["delta"]["stop_reason"].as_str().unwrap() {
                        "end_turn" | "stop_sequence" => "stop",
                        "max_tokens" => "length",
                        "tool_use" => "tool_calls",
                        other => panic!("{name}: stop reason {other} not mapped here"),
                    }
                    .into();
                    v["usage"].clone()
                }
                _ => Value::Null,
            };
            // Counts are cumulative: a later one replaces an earlier one.
            input = int(&usage["input_tokens"]).unwrap_or(input);
            read = int(&usage["cache_read_input_tokens"]).unwrap_or(read);
            write = int(&usage["cache_creation_input_tokens"]).unwrap_or(write);
            let split = &usage["cache_creation"];
            if split.is_object() {
                a.cache_write_1h_tokens =
                    Some(int(&split["ephemeral_1h_input_tokens"]).unwrap_or(0));
            }
            a.completion_tokens = int(&usage["output_tokens"]).unwrap_or(a.completion_tokens);
        }
        // Sluice's prompt count is every input token, cached ones included.
        a.prompt_tokens = input + read + write;
        a.cache_read_tokens = read;
        a.cache_write_tokens = write;
    } else {
        for (_, data) in events(name) {
            if data.trim() == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            if a.model.is_empty() {
                a.model = v["model"].as_str().unwrap_or("").into();
            }
            if let Some(choice) = v["choices"].get(0) {
                let d = &choice["delta"];
                a.text += d["content"].as_str().unwrap_or("");
                a.refusal += d["refusal"].as_str().unwrap_or("");
                // DeepSeek and vLLM name it `reasoning_content`, OpenRouter
                // `reasoning`.
                for field in ["reasoning_content", "reasoning"] {
                    a.reasoning += d[field].as_str().unwrap_or("");
                }
                for call in d["tool_calls"].as_array().into_iter().flatten() {
                    let slot = call["index"].as_u64().unwrap() as usize;
                    let c = a.call_mut(slot);
                    c.0 += call["id"].as_str().unwrap_or("");
                    c.1 += call["function"]["name"].as_str().unwrap_or("");
                    c.2 += call["function"]["arguments"].as_str().unwrap_or("");
                }
                if let Some(f) = choice["finish_reason"].as_str() {
                    a.finish = f.into();
                }
            }
            let u = &v["usage"];
            if u.is_object() {
                a.prompt_tokens = int(&u["prompt_tokens"]).unwrap();
                a.completion_tokens = int(&u["completion_tokens"]).unwrap();
                a.cache_read_tokens =
                    int(&u["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0);
            }
        }
    }
    assert!(!a.finish.is_empty(), "{name}: the recording has no finish");
    a
}

// ---------------------------------------------------------------- decoder

/// Parses `pieces` one after the other through Sluice's SSE parser and the
/// wire's decoder.
fn decode_pieces<'a>(name: &str, pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Chunk> {
    let mut parser = SseParser::new();
    let (mut openai, mut anthropic) = (OpenAiDecoder::new(), AnthropicDecoder::new());
    let mut decode = |ev: &sluice::provider::sse::SseEvent, out: &mut Vec<Chunk>| {
        let r = if is_anthropic(name) {
            anthropic.decode(ev, out)
        } else {
            openai.decode(ev, out)
        };
        r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
    };
    let (mut events, mut chunks) = (Vec::new(), Vec::new());
    for piece in pieces {
        parser.push(piece, &mut events).unwrap();
        for ev in events.drain(..) {
            decode(&ev, &mut chunks);
        }
    }
    parser.finish(&mut events);
    for ev in &events {
        decode(ev, &mut chunks);
    }
    chunks
}

/// The decoder's chunks read back as an answer.
fn answer_of(chunks: &[Chunk]) -> Answer {
    let mut a = Answer::default();
    let mut slots: Vec<u32> = Vec::new();
    let mut ended = false;
    for c in chunks {
        match c {
            Chunk::Model(m) => a.model = m.clone(),
            Chunk::Delta(t) => a.text += t,
            Chunk::Refusal(t) => a.refusal += t,
            Chunk::Reasoning(t) => a.reasoning += t,
            Chunk::ToolCallDelta {
                index,
                id,
                name,
                arguments,
            } => {
                let slot = slots.iter().position(|i| i == index).unwrap_or_else(|| {
                    slots.push(*index);
                    slots.len() - 1
                });
                let call = a.call_mut(slot);
                call.0 += id.as_deref().unwrap_or("");
                call.1 += name.as_deref().unwrap_or("");
                call.2 += arguments;
            }
            Chunk::Finish(f) => a.finish = f.as_str().into(),
            Chunk::Usage(Usage {
                prompt_tokens,
                completion_tokens,
                cache_read_tokens,
                cache_write_tokens,
                cache_write_1h_tokens,
            }) => {
                a.prompt_tokens = *prompt_tokens;
                a.completion_tokens = *completion_tokens;
                a.cache_read_tokens = *cache_read_tokens;
                a.cache_write_tokens = *cache_write_tokens;
                a.cache_write_1h_tokens = *cache_write_1h_tokens;
            }
            Chunk::End => ended = true,
            // Checked by messages_api.rs, which relays them.
            Chunk::ReasoningSignature(_) | Chunk::RedactedReasoning(_) => {}
            // The recordings are of one choice; logprobs are checked by
            // the decoder's tests and chat_choices.rs.
            Chunk::Choice(_) | Chunk::Logprobs(_) => {}
            // Where a call's block ends: the Messages encoder's concern.
            Chunk::ToolCallEnd(_) => {}
        }
    }
    assert!(ended, "no end of stream in {chunks:?}");
    a
}

fn raw(name: &str) -> Vec<u8> {
    std::fs::read(path(name)).unwrap()
}

#[test]
fn every_recording_decodes_to_what_it_says() {
    for name in RECORDINGS {
        assert_eq!(
            answer_of(&decode_pieces(name, [&raw(name)[..]])),
            expected(name),
            "{name}"
        );
    }
}

#[test]
fn every_recording_split_at_every_byte_boundary_decodes_the_same() {
    for name in RECORDINGS {
        let body = raw(name);
        let whole = decode_pieces(name, [&body[..]]);
        for at in 0..=body.len() {
            assert_eq!(
                decode_pieces(name, [&body[..at], &body[at..]]),
                whole,
                "{name} split at byte {at}"
            );
        }
        assert_eq!(
            decode_pieces(name, body.chunks(1)),
            whole,
            "{name} one byte at a time"
        );
    }
}

fn split_at<'a>(body: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
    at.sort_unstable();
    at.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in at {
        pieces.push(&body[start..cut]);
        start = cut;
    }
    pieces.push(&body[start..]);
    pieces
}

proptest! {
    #[test]
    fn recordings_cut_anywhere_with_crlf_or_lf_decode_the_same(
        which in any::<Index>(),
        crlf in any::<bool>(),
        cuts in proptest::collection::vec(any::<Index>(), 0..64),
    ) {
        let name = RECORDINGS[which.index(RECORDINGS.len())];
        let body = raw(name);
        let whole = decode_pieces(name, [&body[..]]);
        let body: Vec<u8> = if crlf {
            body.iter()
                .flat_map(|b| if *b == b'\n' { &b"\r\n"[..] } else { std::slice::from_ref(b) })
                .copied()
                .collect()
        } else {
            body
        };
        prop_assert_eq!(decode_pieces(name, split_at(&body, &cuts)), whole);
    }
}

// ----------------------------------------------------------------- server

/// A server with one pipeline `chat` (no tools of its own, so the model's
/// calls go back to the client) on a provider of the recording's wire.
async fn serve(mock: &MockProvider, name: &str) -> RunningServer {
    let kind = if is_anthropic(name) {
        "anthropic"
    } else {
        "openai"
    };
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  up: {{kind: {kind}, base_url: \"{}\"}}\n",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        "name: chat\nmodel: {provider: up, name: the-model}\nlimits: {max_tokens: 4000}\n"
            .to_string(),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

const ASK: &str = r#"[{"role":"user","content":"Go."}]"#;

/// Every `data:` payload of a streamed chat completion.
async fn chat_chunks(resp: http::Response<hyper::body::Incoming>) -> Vec<Value> {
    use http_body_util::BodyExt;
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(&body, &mut events).unwrap();
    parser.finish(&mut events);
    events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap_or_else(|_| json!(e.data)))
        .collect()
}

/// A streamed chat completion read back as an answer (no reasoning: Chat
/// Completions has no place for Anthropic's thinking).
fn answer_of_chat_stream(chunks: &[Value]) -> Answer {
    let mut a = Answer::default();
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    for c in &chunks[..chunks.len() - 1] {
        assert!(c.get("error").is_none(), "{c}");
        a.model = c["model"].as_str().unwrap().into();
        if let Some(choice) = c["choices"].get(0) {
            let d = &choice["delta"];
            a.text += d["content"].as_str().unwrap_or("");
            a.refusal += d["refusal"].as_str().unwrap_or("");
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let slot = call["index"].as_u64().unwrap() as usize;
                let entry = a.call_mut(slot);
                entry.0 += call["id"].as_str().unwrap_or("");
                entry.1 += call["function"]["name"].as_str().unwrap_or("");
                entry.2 += call["function"]["arguments"].as_str().unwrap();
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                assert!(a.finish.is_empty(), "two finish reasons");
                a.finish = f.into();
            }
        }
        if c["usage"].is_object() {
            a.prompt_tokens = int(&c["usage"]["prompt_tokens"]).unwrap();
            a.completion_tokens = int(&c["usage"]["completion_tokens"]).unwrap();
            a.cache_read_tokens = cached(&c["usage"]);
        }
    }
    a
}

/// Chat Completions' cache reads, `prompt_tokens_details.cached_tokens`
/// (absent when there are none).
fn cached(usage: &Value) -> i128 {
    int(&usage["prompt_tokens_details"]["cached_tokens"]).unwrap_or(0)
}

fn answer_of_chat_json(v: &Value) -> Answer {
    let choice = &v["choices"][0];
    let m = &choice["message"];
    Answer {
        model: v["model"].as_str().unwrap().into(),
        text: m["content"].as_str().unwrap_or("").into(),
        refusal: m["refusal"].as_str().unwrap_or("").into(),
        calls: m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().into(),
                    c["function"]["name"].as_str().unwrap().into(),
                    c["function"]["arguments"].as_str().unwrap().into(),
                )
            })
            .collect(),
        finish: choice["finish_reason"].as_str().unwrap().into(),
        prompt_tokens: int(&v["usage"]["prompt_tokens"]).unwrap(),
        completion_tokens: int(&v["usage"]["completion_tokens"]).unwrap(),
        cache_read_tokens: cached(&v["usage"]),
        ..Answer::default()
    }
}

/// The cache figures of a pipeline's usage (each absent when zero).
fn pipeline_cache(a: &mut Answer, usage: &Value) {
    a.cache_read_tokens = int(&usage["cache_read_tokens"]).unwrap_or(0);
    a.cache_write_tokens = int(&usage["cache_write_tokens"]).unwrap_or(0);
    a.cache_write_1h_tokens = int(&usage["cache_write_1h_tokens"]);
}

/// What the pipeline's own events say; tool arguments come parsed, so the
/// expected ones are compared as JSON by the caller.
fn answer_of_pipeline(events: &[(String, Value)]) -> (Answer, Vec<Value>) {
    let mut a = Answer::default();
    let mut args = Vec::new();
    for (name, data) in events {
        match name.as_str() {
            "start" => a.model = data["model"].as_str().unwrap().into(),
            "delta" => a.text += data["text"].as_str().unwrap(),
            "refusal" => a.refusal += data["text"].as_str().unwrap(),
            "tool_call" => {
                assert_eq!(data["runs"], "client", "{data}");
                a.calls.push((
                    data["id"].as_str().unwrap().into(),
                    data["name"].as_str().unwrap().into(),
                    String::new(),
                ));
                args.push(data["arguments"].clone());
            }
            "usage" => {
                assert_eq!(data["estimated"], false, "{data}");
                a.prompt_tokens = int(&data["prompt_tokens"]).unwrap();
                a.completion_tokens = int(&data["completion_tokens"]).unwrap();
                pipeline_cache(&mut a, data);
            }
            "done" => a.finish = data["finish_reason"].as_str().unwrap().into(),
            "error" => panic!("error event {data}"),
            _ => {}
        }
    }
    (a, args)
}

/// The answer as Chat Completions can show it: no reasoning, and of the
/// cache figures only the reads.
fn chat_view(mut a: Answer) -> Answer {
    a.reasoning.clear();
    a.cache_write_tokens = 0;
    a.cache_write_1h_tokens = None;
    a
}

/// The answer as Sluice's pipeline API shows it: no reasoning, cache
/// figures left out when zero (tool arguments are compared as JSON by the
/// caller).
fn pipeline_view(mut a: Answer) -> Answer {
    a.reasoning.clear();
    a.cache_write_1h_tokens = a.cache_write_1h_tokens.filter(|n| *n != 0);
    a
}

/// One recording through both surfaces, streamed and not, with `fault`
/// applied to every upstream reply.
async fn replay(name: &'static str, fault: Option<Fault>) {
    let answer = expected(name);
    let want = chat_view(answer.clone());
    let reply = || {
        let r = Reply::fixture(name);
        match &fault {
            Some(f) => r.fault(f.clone()),
            None => r,
        }
    };
    let script = Script::single(reply())
        .then(reply())
        .then(reply())
        .then(reply());
    let mock = MockProvider::start(script).await.unwrap();
    let server = serve(&mock, name).await;
    let ctx = format!("{name} with {fault:?}");

    let body = format!(
        r#"{{"model":"chat","stream":true,"stream_options":{{"include_usage":true}},"messages":{ASK}}}"#
    );
    let got = answer_of_chat_stream(
        &chat_chunks(send(server.addr, post_json("/v1/chat/completions", &body)).await).await,
    );
    assert_eq!(got, want, "chat stream: {ctx}");

    let body = format!(r#"{{"model":"chat","stream":false,"messages":{ASK}}}"#);
    let resp = send(server.addr, post_json("/v1/chat/completions", &body)).await;
    assert_eq!(resp.status(), 200, "{ctx}");
    assert_eq!(
        answer_of_chat_json(&body_json(resp).await),
        want,
        "chat json: {ctx}"
    );

    let body = format!(r#"{{"messages":{ASK}}}"#);
    let mut reader = SseReader::new(post(server.addr, &body).await);
    let events: Vec<(String, Value)> = reader
        .collect()
        .await
        .into_iter()
        .map(|s| (s.name, s.data))
        .collect();
    let (got, args) = answer_of_pipeline(&events);
    let mut want_pipeline = pipeline_view(answer);
    let want_args: Vec<Value> = want_pipeline
        .calls
        .iter_mut()
        .map(|c| {
            let text = std::mem::take(&mut c.2);
            serde_json::from_str(if text.is_empty() { "{}" } else { &text }).unwrap()
        })
        .collect();
    assert_eq!(got, want_pipeline, "pipeline stream: {ctx}");
    assert_eq!(args, want_args, "pipeline tool arguments: {ctx}");

    let body = format!(r#"{{"messages":{ASK},"stream":false}}"#);
    let resp = post(server.addr, &body).await;
    assert_eq!(resp.status(), 200, "{ctx}");
    let v = body_json(resp).await;
    let mut got = Answer {
        model: v["model"].as_str().unwrap().into(),
        text: v["output"].as_str().unwrap().into(),
        refusal: v["refusal"].as_str().unwrap_or("").into(),
        calls: v["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().into(),
                    c["name"].as_str().unwrap().into(),
                    String::new(),
                )
            })
            .collect(),
        finish: v["finish_reason"].as_str().unwrap().into(),
        prompt_tokens: int(&v["usage"]["prompt_tokens"]).unwrap(),
        completion_tokens: int(&v["usage"]["completion_tokens"]).unwrap(),
        ..Answer::default()
    };
    pipeline_cache(&mut got, &v["usage"]);
    assert_eq!(got, want_pipeline, "pipeline json: {ctx}: {v}");
    let got_args: Vec<Value> = v["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["arguments"].clone())
        .collect();
    assert_eq!(got_args, want_args, "pipeline json tool arguments: {ctx}");

    assert_eq!(mock.journal().request_count(), 4, "{ctx}");
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn every_recording_through_both_surfaces_whole() {
    for name in RECORDINGS {
        replay(name, None).await;
    }
}

#[tokio::test(start_paused = true)]
async fn every_recording_through_both_surfaces_in_byte_fragments() {
    // 1: every byte its own HTTP chunk (splits every line and every UTF-8
    // sequence); 7 and 64: splits that fall at varied places.
    for n in [1, 7, 64] {
        for name in RECORDINGS {
            replay(name, Some(Fault::Fragment(n))).await;
        }
    }
}
