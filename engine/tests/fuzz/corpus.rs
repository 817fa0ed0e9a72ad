//! Replays the regression corpus: every file under `fixtures/fuzz/<target>/`
//! goes through the same checks as that target's generated cases. A crash a
//! fuzz run finds is kept by adding its input here as a file, so it is
//! replayed forever, whatever the generators become.

use std::path::{Path, PathBuf};

use proptest::test_runner::TestCaseError;
use sluice::provider::anthropic_wire::AnthropicDecoder;
use sluice::provider::openai_wire::OpenAiDecoder;
use sluice::provider::sse::SseParser;

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    // An empty corpus would make the replay pass without checking anything.
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

fn replay(target: &str, check: impl Fn(&Path) -> Result<(), TestCaseError>) {
    for path in corpus(target) {
        if let Err(e) = check(&path) {
            panic!("{}: {e}", path.display());
        }
    }
}

fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every cut point, one at a time, for inputs small enough.
fn single_cuts(len: usize) -> Vec<Vec<usize>> {
    let step = (len / 512).max(1);
    (0..=len).step_by(step).map(|c| vec![c]).collect()
}

#[test]
fn sse() {
    replay("sse", |p| {
        let body = bytes(p);
        let (events, err) = crate::sse::check_splits(&body, &single_cuts(body.len()))?;
        if err.is_none() {
            proptest::prop_assert_eq!(events, crate::sse::reference(&body));
        }
        Ok(())
    });
}

/// An SSE body of one wire format, decoded event by event.
fn decode_body(body: &[u8], decode: &mut crate::wire::Decode<'_>) -> Result<(), TestCaseError> {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let _ = parser.push(body, &mut events);
    parser.finish(&mut events);
    let mut out = Vec::new();
    for ev in &events {
        let _ = crate::wire::decode_checked(decode, ev, &mut out)?;
    }
    Ok(())
}

#[test]
fn openai_wire() {
    replay("openai", |p| {
        let mut dec = OpenAiDecoder::new();
        decode_body(&bytes(p), &mut |e, o| dec.decode(e, o))
    });
}

#[test]
fn anthropic_wire() {
    replay("anthropic", |p| {
        let mut dec = AnthropicDecoder::new();
        decode_body(&bytes(p), &mut |e, o| dec.decode(e, o))
    });
}

#[test]
fn h1_heads() {
    replay("h1_head", |p| crate::h1::check_head(&bytes(p)).map(|_| ()));
}

#[test]
fn chunked_bodies() {
    replay("chunked", |p| {
        let body = bytes(p);
        crate::h1::check_chunked(&body, &single_cuts(body.len()))
    });
}

#[test]
fn config() {
    replay("config", crate::config::check_path);
}

#[test]
fn request_bodies() {
    replay("request_body", |p| crate::request::check_body(&bytes(p)));
}

#[test]
fn server() {
    replay("server", |p| crate::server::check_raw(&bytes(p)));
}
