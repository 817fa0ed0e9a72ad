//! Throughput of the SSE hot paths, in bytes per second:
//!
//! - `upstream_sse/*`: the upstream body parser ([`SseParser`]) alone, and
//!   followed by OpenAI chunk decoding ([`OpenAiDecoder`]), with the body
//!   pushed whole or in 1460-byte pieces (one TCP segment of payload).
//!   Throughput counts input bytes.
//! - `client_sse/*`: encoding 10,000 `Event::Delta`s for the client
//!   ([`encode`]). Throughput counts output bytes.
//!
//! Run with `cargo bench -p sluice-benches --bench sse` (add `-- --quick`
//! for a faster, rougher pass, or `-- <filter>` to run a subset).

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use sluice::provider::Chunk;
use sluice::provider::openai_wire::OpenAiDecoder;
use sluice::provider::sse::{SseEvent, SseParser};
use sluice::run::Event;
use sluice::serve::sse::encode;

const RECORDED_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/recorded/openai/text_stop.sse"
);

/// Payload of a full-size Ethernet frame's TCP segment.
const SEGMENT: usize = 1460;

/// Content chunks in the synthetic body, and deltas in the encoding benches.
const COUNT: usize = 10_000;

/// A typical 40-character token run: quotes to escape, multi-byte UTF-8.
const DELTA_40: &str = " \"Ça va?\" she asked — naïve café, déjà 😀";

/// An OpenAI stream of `COUNT` " word" content chunks, shaped like the
/// recording: content chunks, a finish chunk, a usage chunk, `[DONE]`.
fn synthetic_body() -> Vec<u8> {
    const PREFIX: &str = r#"data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":["#;
    let content = format!(
        "{PREFIX}{}]}}\n\n",
        r#"{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}"#
    );
    let mut body = content.repeat(COUNT);
    body.push_str(PREFIX);
    body.push_str(r#"{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#);
    body.push_str("\n\n");
    body.push_str(PREFIX);
    body.push_str(
        r#"],"usage":{"prompt_tokens":14,"completion_tokens":10000,"total_tokens":10014}}"#,
    );
    body.push_str("\n\ndata: [DONE]\n\n");
    body.into_bytes()
}

/// Parses `body` fed in `piece`-byte pushes, returning the events.
fn parse(body: &[u8], piece: usize) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    for p in body.chunks(piece) {
        parser.push(p, &mut events).expect("valid sse");
    }
    parser.finish(&mut events);
    events
}

/// Parses then decodes `body`, returning the chunks.
fn parse_decode(body: &[u8], piece: usize) -> Vec<Chunk> {
    let mut decoder = OpenAiDecoder::new();
    let mut chunks = Vec::new();
    for ev in parse(body, piece) {
        decoder.decode(&ev, &mut chunks).expect("valid chunk");
    }
    chunks
}

/// Checks an input once, outside the measurements, so a broken fixture or a
/// parser change cannot make a bench measure an early error path. Returns the
/// number of events.
fn check_upstream(name: &str, body: &[u8], deltas: usize) -> usize {
    let events = parse(body, body.len().max(1));
    assert_eq!(
        parse(body, SEGMENT),
        events,
        "{name}: segmenting changed the events"
    );
    let chunks = parse_decode(body, SEGMENT);
    let count = |pred: fn(&Chunk) -> bool| chunks.iter().filter(|c| pred(c)).count();
    assert_eq!(count(|c| matches!(c, Chunk::Delta(_))), deltas, "{name}");
    assert_eq!(count(|c| matches!(c, Chunk::Usage(_))), 1, "{name}");
    assert!(matches!(chunks.last(), Some(Chunk::End)), "{name}");
    events.len()
}

fn upstream(c: &mut Criterion) {
    let recorded = std::fs::read(RECORDED_PATH).expect(RECORDED_PATH);
    let synthetic = synthetic_body();
    let inputs = [
        (
            "recorded",
            check_upstream("recorded", &recorded, 30),
            recorded,
        ),
        (
            "synthetic_10k",
            check_upstream("synthetic", &synthetic, COUNT),
            synthetic,
        ),
    ];

    let mut group = c.benchmark_group("upstream_sse");
    for (name, events_per_body, body) in &inputs {
        let body = body.as_slice();
        group.throughput(Throughput::Bytes(body.len() as u64));
        // Millisecond iterations: linear sampling would need more than the
        // 3 s budget for 30 samples.
        group.sampling_mode(if body.len() > 1 << 20 {
            SamplingMode::Flat
        } else {
            SamplingMode::Auto
        });
        eprintln!(
            "upstream_sse/*/{name}: {} bytes, {events_per_body} events",
            body.len()
        );
        for (piece_name, piece) in [("whole", body.len()), ("seg1460", SEGMENT)] {
            // Output buffers live across iterations, as they would across the
            // reads of one response; a parser is per response.
            let mut events: Vec<SseEvent> = Vec::new();
            group.bench_function(BenchmarkId::new(format!("parse/{piece_name}"), name), |b| {
                b.iter(|| {
                    let mut parser = SseParser::new();
                    for p in black_box(body).chunks(piece) {
                        parser.push(p, &mut events).unwrap();
                        black_box(&events);
                        events.clear();
                    }
                    parser.finish(&mut events);
                    black_box(&events);
                    events.clear();
                })
            });

            let mut chunks: Vec<Chunk> = Vec::new();
            group.bench_function(
                BenchmarkId::new(format!("parse_decode/{piece_name}"), name),
                |b| {
                    b.iter(|| {
                        let mut parser = SseParser::new();
                        let mut decoder = OpenAiDecoder::new();
                        let mut decode_all = |events: &mut Vec<SseEvent>| {
                            for ev in events.iter() {
                                decoder.decode(ev, &mut chunks).unwrap();
                            }
                            events.clear();
                            black_box(&chunks);
                            chunks.clear();
                        };
                        for p in black_box(body).chunks(piece) {
                            parser.push(p, &mut events).unwrap();
                            decode_all(&mut events);
                        }
                        parser.finish(&mut events);
                        decode_all(&mut events);
                    })
                },
            );
        }
    }
    group.finish();
}

fn client(c: &mut Criterion) {
    assert_eq!(DELTA_40.chars().count(), 40);
    let mut group = c.benchmark_group("client_sse");
    for (name, text) in [("word", " word"), ("chars40", DELTA_40)] {
        let events: Vec<Event> = (0..COUNT).map(|_| Event::Delta(text.into())).collect();
        let mut buf = BytesMut::new();
        let encode_all = |buf: &mut BytesMut| {
            // Ids as the client body numbers them: from 1.
            for (id, ev) in (1..).zip(&events) {
                encode(ev, id, buf);
            }
        };
        encode_all(&mut buf);
        let produced = buf.len();
        eprintln!("client_sse/encode/{name}: {COUNT} events, {produced} bytes");
        group.throughput(Throughput::Bytes(produced as u64));
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| {
                buf.clear();
                encode_all(&mut buf);
                black_box(&buf);
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // Set here, not per group, so command-line flags still override them.
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = upstream, client
}
criterion_main!(benches);
