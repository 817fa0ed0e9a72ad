//! A raw HTTP/1.1 test client on a tokio `TcpStream`: byte-level access to
//! the response, its chunk framing, and control over when it closes.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous virtual-time bound for any single test step.
pub const T: Duration = Duration::from_secs(300);

pub fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-4o",
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })
}

pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client {
            stream: TcpStream::connect(addr).await.expect("connect to mock"),
            buf: BytesMut::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write request");
    }

    pub async fn post(&mut self, path: &str, body: &Value) {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: mock\r\nContent-Type: application/json\r\n\
             Authorization: Bearer sk-test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send_raw(req.as_bytes()).await;
    }

    pub async fn chat(&mut self, stream: bool) {
        self.post("/v1/chat/completions", &chat_body(stream)).await;
    }

    /// Reads more bytes; `Ok(0)` at EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16 * 1024);
        self.stream.read_buf(&mut self.buf).await
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i + 2);
                return Ok(String::from_utf8_lossy(&line[..i]).into_owned());
            }
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    pub async fn read_head(&mut self) -> io::Result<Head> {
        let status_line = self.line().await?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let mut headers = Vec::new();
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok(Head { status, headers });
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }

    /// One HTTP chunk's payload; `None` for the terminating chunk. EOF in
    /// the middle of the body is `UnexpectedEof`; a reset is `ConnectionReset`.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let size_line = self.line().await?;
        let size = usize::from_str_radix(size_line.trim(), 16).expect("chunk size");
        while self.buf.len() < size + 2 {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let data = self.buf.split_to(size).freeze();
        assert_eq!(&self.buf[..2], b"\r\n", "chunk not followed by CRLF");
        self.buf.advance(2);
        if size == 0 {
            return Ok(None);
        }
        Ok(Some(data))
    }

    /// All chunks of a chunked body, up to the terminating chunk.
    pub async fn read_chunks(&mut self) -> io::Result<Vec<Bytes>> {
        let mut chunks = Vec::new();
        while let Some(c) = self.read_chunk().await? {
            chunks.push(c);
        }
        Ok(chunks)
    }

    pub async fn read_body(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.read_chunks().await?.concat())
    }

    /// A `content-length` body.
    pub async fn read_exact_body(&mut self, len: usize) -> io::Result<Bytes> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }

    /// Reads until EOF (`Ok`) or an error, returning what arrived.
    pub async fn read_to_close(&mut self) -> (Vec<u8>, io::Result<()>) {
        loop {
            match self.fill().await {
                Ok(0) => return (self.buf.split().to_vec(), Ok(())),
                Ok(_) => {}
                Err(e) => return (self.buf.split().to_vec(), Err(e)),
            }
        }
    }
}

/// A streamed reply's events: body split at blank lines.
pub fn events_of(body: &[u8]) -> Vec<String> {
    String::from_utf8(body.to_vec())
        .expect("utf-8 body")
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// JSON of each `data:` event that is JSON.
pub fn json_events(body: &[u8]) -> Vec<Value> {
    events_of(body)
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

pub fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(sluice_testkit::fixtures_dir().join(name)).expect("fixture")
}
