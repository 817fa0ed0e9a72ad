//! Entry points into the HTTP/1.1 client's private parsers for the fuzz
//! tests (`engine/tests/fuzz.rs`). Not an API: hidden from the docs and
//! free to change with the parsers.
//!
//! A child module of `h1`, so the parsers keep their narrow visibility and
//! their code is not touched for testing.

use super::{Chunked, Framing, parse_head};

/// What a response head said, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSummary {
    pub status: u16,
    pub headers: usize,
    /// `"chunked"`, `"length N"` or `"close"`.
    pub framing: String,
    pub keep_alive: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

/// Parses a response head at the start of `buf`: `Ok(None)` while it is
/// incomplete, the error's message when it is malformed.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<HeadSummary>, String> {
    let parsed = parse_head(buf).map_err(|e| e.to_string())?;
    Ok(parsed.map(|(head, framing, keep_alive, len)| HeadSummary {
        status: head.status,
        headers: head.headers.len(),
        framing: match framing {
            Framing::Chunked(_) => "chunked".into(),
            Framing::Length(n) => format!("length {n}"),
            Framing::Close => "close".into(),
        },
        keep_alive,
        len,
    }))
}

/// The chunked transfer-coding decoder, which removes framing in place.
#[derive(Debug, Default)]
pub struct ChunkedDecoder(Chunked);

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes `buf` in place: `(data, consumed)`, the data bytes now at the
    /// front of `buf` and the bytes of `buf` that belonged to the body.
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<(usize, usize), String> {
        self.0
            .decode(buf)
            .map(|d| (d.data, d.consumed))
            .map_err(|e| e.to_string())
    }

    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }
}
