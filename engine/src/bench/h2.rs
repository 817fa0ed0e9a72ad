//! HTTP/2 over cleartext with prior knowledge (h2c) for `sluice bench
//! --http2`: a few connections shared by every request, each carrying up
//! to [`STREAMS_PER_CONN`] streams at once. Ten thousand concurrent
//! streams then need a hundred sockets instead of ten thousand, in the
//! client and in a gateway in front (which holds two per HTTP/1.1 stream).
//!
//! The body is decoded by the same SSE parser and wire decoders as
//! HTTP/1.1's ([`crate::provider::http`]), and every error built from what
//! the server sent is scrubbed of the target's secrets the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::provider::http::{Decoder, retry_after};
use crate::provider::secrets::Secrets;
use crate::provider::sse::{SseEvent, SseParser};
use crate::provider::{Chunk, ProviderError};

/// Streams one connection carries at once (hyper's server allows 200;
/// servers may announce fewer, and the client then waits for a slot).
pub const STREAMS_PER_CONN: usize = 100;

/// Longest error body read from a server that answered with an error.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The shared connections to one `http://` URL.
pub(super) struct H2 {
    host: String,
    port: u16,
    uri: Uri,
    secrets: Secrets,
    conns: tokio::sync::Mutex<Vec<Conn>>,
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    /// Streams open on it now.
    streams: Arc<AtomicUsize>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A stream's place on its connection, given back when dropped.
struct Lease(Arc<AtomicUsize>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2 {
    /// For `uri`, an `http://` URL (h2c has no TLS; an `https://` server
    /// negotiates HTTP/2 with ALPN, which this client does not do).
    pub(super) fn new(uri: &Uri, secrets: Secrets) -> Result<H2, String> {
        if uri.scheme_str() != Some("http") {
            return Err("--http2 is h2c (HTTP/2 without TLS): it needs an http:// URL".into());
        }
        let host = uri.host().unwrap_or("localhost");
        Ok(H2 {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(80),
            uri: uri.clone(),
            secrets,
            conns: tokio::sync::Mutex::new(Vec::new()),
        })
    }

    /// A connection with a free stream, opened if none has one (one at a
    /// time: concurrent callers wait for it and share it).
    async fn lease(
        &self,
        connect_timeout: Duration,
    ) -> Result<(SendRequest<Full<Bytes>>, Lease), ProviderError> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.sender.is_closed());
        let free = conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONN);
        let conn = match free {
            Some(c) => c,
            None => {
                let c = self.connect(connect_timeout).await?;
                conns.push(c);
                &conns[conns.len() - 1]
            }
        };
        conn.streams.fetch_add(1, Ordering::Relaxed);
        Ok((conn.sender.clone(), Lease(conn.streams.clone())))
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, ProviderError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ProviderError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| ProviderError::Connect(format!("h2c handshake: {e}")))
        };
        let (sender, conn) = match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r?,
            Err(_) => return Err(ProviderError::ConnectTimeout(timeout)),
        };
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn {
            sender,
            streams: Arc::new(AtomicUsize::new(0)),
            driver,
        })
    }

    /// Sends a POST of `body` and waits for a 2xx head; any other status
    /// becomes [`ProviderError::Status`] with `summarize`'s words.
    async fn exchange(
        &self,
        accept: &'static str,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        connect_timeout: Duration,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<(Incoming, Lease), ProviderError> {
        let (mut sender, lease) = self.lease(connect_timeout).await?;
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, accept);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Config(e.to_string()))?;
        let io = |e: hyper::Error| ProviderError::Io(e.to_string());
        sender.ready().await.map_err(io)?;
        let resp = sender.send_request(req).await.map_err(io)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok((resp.into_body(), lease));
        }
        let retry_after = retry_after(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes().to_vec())
            .unwrap_or_default();
        let body = self.secrets.scrub_bytes(&body);
        Err(ProviderError::Status {
            status,
            retry_after,
            message: summarize(status, &body),
        })
    }

    /// Streams the answer to `body` through `decoder`, handing each chunk
    /// to `on_chunk` until it returns true (the end marker) or the body
    /// ends (without one: [`ProviderError::Truncated`]).
    pub(super) async fn stream(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        connect_timeout: Duration,
        mut decoder: Box<dyn Decoder>,
        summarize: fn(u16, &[u8]) -> String,
        mut on_chunk: impl FnMut(Chunk) -> bool,
    ) -> Result<(), ProviderError> {
        let run = async {
            let (mut incoming, _lease) = self
                .exchange(
                    "text/event-stream",
                    headers,
                    body,
                    connect_timeout,
                    summarize,
                )
                .await?;
            let mut parser = SseParser::new();
            let mut events: Vec<SseEvent> = Vec::new();
            let mut chunks = Vec::new();
            let mut deliver = |events: &mut Vec<SseEvent>| -> Result<bool, ProviderError> {
                for ev in events.drain(..) {
                    decoder.decode(&ev, &mut chunks)?;
                    for c in chunks.drain(..) {
                        if on_chunk(c.scrubbed(&self.secrets)) {
                            return Ok(true);
                        }
                    }
                }
                Ok(false)
            };
            while let Some(frame) = incoming.frame().await {
                let frame = frame.map_err(|e| ProviderError::Io(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let pushed = parser.push(&data, &mut events);
                if deliver(&mut events)? {
                    return Ok(());
                }
                pushed?;
            }
            parser.finish(&mut events);
            match deliver(&mut events)? {
                true => Ok(()),
                false => Err(ProviderError::Truncated),
            }
        };
        run.await.map_err(|e| e.scrubbed(&self.secrets))
    }

    /// The whole answer to `body` (a non-streaming call), at most `limit`
    /// bytes.
    pub(super) async fn call(
        &self,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        connect_timeout: Duration,
        limit: usize,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<Vec<u8>, ProviderError> {
        let run = async {
            let (incoming, _lease) = self
                .exchange(
                    "application/json",
                    headers,
                    body,
                    connect_timeout,
                    summarize,
                )
                .await?;
            Limited::new(incoming, limit)
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
                    Ok(_) => ProviderError::Malformed(format!("answer longer than {limit} bytes")),
                    Err(e) => ProviderError::Io(e.to_string()),
                })
        };
        run.await.map_err(|e| e.scrubbed(&self.secrets))
    }
}
