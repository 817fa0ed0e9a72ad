//! What the HTTP providers share: HTTP/1.1 calls on keep-alive connections
//! (plain TCP or rustls TLS, a new connection bounded by the connect
//! timeout), HTTP error statuses with `Retry-After`, and the response body
//! decoded into chunks by a wire [`Decoder`].
//!
//! The returned stream owns its connection ([`super::h1`]) and reads it
//! itself, in the caller's task. Dropping the stream therefore closes the
//! socket at once, which is how timeouts, ceilings and client disconnects
//! stop the upstream from generating (and billing) for nobody.
//!
//! The one exception is a stream that ended cleanly: the consumer received
//! the provider's end marker, nothing failed, and the response allows
//! keep-alive. Its connection goes back to the endpoint's pool instead (see
//! `pool.rs`), and a later call of the same provider sends on it. A call
//! takes the most recently returned live connection, or opens a new one.

use std::collections::VecDeque;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::{HeaderName, HeaderValue, Uri, header};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tracing::debug;

use super::anthropic_wire::AnthropicDecoder;
use super::h1::{Connection, Head, Io, READ_CHUNK};
use super::openai_wire::OpenAiDecoder;
use super::pool::Pool;
use super::secrets::Secrets;
use super::sse::{SseEvent, SseParser};
use super::{Chunk, ChunkStream, ProviderError};

/// Longest error body read from a provider that answered with an HTTP error.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A provider wire format's stream decoder.
pub trait Decoder: Send + 'static {
    /// Turns one upstream event into chunks. On error nothing is appended.
    fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError>;
}

impl Decoder for OpenAiDecoder {
    fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError> {
        OpenAiDecoder::decode(self, ev, out)
    }
}

impl Decoder for AnthropicDecoder {
    fn decode(&mut self, ev: &SseEvent, out: &mut Vec<Chunk>) -> Result<(), ProviderError> {
        AnthropicDecoder::decode(self, ev, out)
    }
}

/// Where one provider's streaming endpoint lives, with its idle
/// connections. Built once per provider when the configuration is
/// compiled, so every call of that provider shares the pool (clones share
/// it too).
#[derive(Debug, Clone)]
pub struct Endpoint {
    https: bool,
    /// Without IPv6 brackets, for connecting and TLS.
    host: String,
    port: u16,
    /// The request target, e.g. `/v1/chat/completions`.
    path: String,
    /// The `Host` header.
    authority: String,
    /// Idle keep-alive connections for [`Endpoint::stream`].
    pool: Arc<Pool>,
    /// Scrubbed from every error built from what this endpoint answers.
    secrets: Secrets,
}

/// A request, serialized: its head and body, ready to be written.
#[derive(Debug, Clone)]
pub struct Outgoing {
    bytes: Vec<u8>,
}

impl Endpoint {
    /// `route` (e.g. `/messages`) under the base URL's path.
    pub fn new(base_url: &Uri, route: &str) -> Self {
        let path = format!("{}{route}", base_url.path().trim_end_matches('/'));
        Self::at(base_url, path)
    }

    /// Exactly `url`, its query included (webhooks).
    pub fn url(url: &Uri) -> Self {
        let path = url
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
        Self::at(url, path)
    }

    fn at(url: &Uri, path: String) -> Self {
        let https = url.scheme_str() == Some("https");
        let host = url.host().unwrap_or("localhost");
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = url
            .authority()
            .map_or_else(|| host.to_string(), |a| a.as_str().to_string());
        Self {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: if path.is_empty() { "/".into() } else { path },
            authority,
            pool: Arc::new(Pool::new()),
            secrets: Secrets::new(),
        }
    }

    /// Scrubs `secrets` (a set shared with the rest of the configuration,
    /// to which more may be added later) from this endpoint's errors.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Keeps up to `max_idle` idle connections instead of the default 256
    /// (`sluice bench` keeps one per concurrent client).
    pub fn with_max_idle(mut self, max_idle: usize) -> Self {
        self.pool = Arc::new(Pool::with_limits(max_idle, super::pool::IDLE_LIMIT));
        self
    }

    /// A JSON POST to this endpoint that asks for an event stream. Names
    /// and values are checked header types, so nothing in them can break
    /// the request's framing.
    pub fn post(
        &self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Outgoing {
        self.post_as("application/json", "text/event-stream", headers, body)
    }

    /// A JSON POST that asks for one JSON answer (for [`Endpoint::call`]).
    pub fn post_json(
        &self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Outgoing {
        self.post_as("application/json", "application/json", headers, body)
    }

    /// A POST of `body` as `content_type`, accepting `accept`.
    pub fn post_as(
        &self,
        content_type: &str,
        accept: &str,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Outgoing {
        let mut bytes = Vec::with_capacity(256 + body.len());
        for part in [
            "POST ",
            &self.path,
            " HTTP/1.1\r\nhost: ",
            &self.authority,
            "\r\ncontent-type: ",
            content_type,
            "\r\naccept: ",
            accept,
            "\r\n",
        ] {
            bytes.extend_from_slice(part.as_bytes());
        }
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"content-length: ");
        bytes.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(&body);
        Outgoing { bytes }
    }

    /// Opens a connection (TCP, then TLS for https), bounded by `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<Connection, ProviderError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ProviderError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            if !self.https {
                return Ok(Connection::new(Io::Plain(tcp)));
            }
            let server_name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| ProviderError::Config(format!("invalid host name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                .connect(server_name, tcp)
                .await
                .map_err(|e| {
                    ProviderError::Connect(format!("tls handshake with {}: {e}", self.host))
                })?;
            Ok(Connection::new(Io::Tls(Box::new(tls))))
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::ConnectTimeout(timeout)),
        }
    }

    /// Sends `req` on a pooled or new connection and, once the provider
    /// accepted it, returns its body decoded by `decoder`. An HTTP error
    /// status becomes [`ProviderError::Status`] with the body summarized by
    /// `summarize`; its connection is closed, not reused.
    ///
    /// Every error this returns, or the stream yields, is scrubbed of the
    /// endpoint's secrets: this is the one place where what a provider sent
    /// becomes an error message (see `secrets.rs`).
    pub async fn stream<D: Decoder>(
        &self,
        req: Outgoing,
        connect_timeout: Duration,
        decoder: D,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<ChunkStream, ProviderError> {
        let conn = self.exchange_ok(req, connect_timeout, summarize).await?;
        Ok(Box::pin(UpstreamStream {
            pool: self.pool.clone(),
            secrets: self.secrets.clone(),
            conn: Some(conn),
            parser: SseParser::new(),
            decoder,
            events: Vec::new(),
            pending: VecDeque::new(),
            error: None,
            finished: false,
            failed: false,
            saw_end: false,
            end_delivered: false,
        }))
    }

    /// [`Endpoint::exchange`], then a status that is not 2xx becomes
    /// [`ProviderError::Status`] with `summarize`'s words; every error is
    /// scrubbed of secrets.
    async fn exchange_ok(
        &self,
        req: Outgoing,
        connect_timeout: Duration,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<Connection, ProviderError> {
        let secrets = &self.secrets;
        let (mut conn, head) = self
            .exchange(req, connect_timeout)
            .await
            .map_err(|e| e.scrubbed(secrets))?;
        if !(200..300).contains(&head.status) {
            let body = read_body(&mut conn, MAX_ERROR_BODY).await;
            // Scrubbed before it is summarized: a summary cut short could
            // otherwise end in the middle of a key, where a whole-key match
            // no longer finds it.
            let body = secrets.scrub_bytes(&body);
            let error = ProviderError::Status {
                status: head.status,
                retry_after: retry_after(&head.headers),
                message: summarize(head.status, &body),
            };
            return Err(error.scrubbed(secrets));
        }
        Ok(conn)
    }

    /// Sends `req` on the most recently returned live idle connection, or
    /// on a new one (bounded by `connect_timeout`), and waits for the
    /// response head.
    ///
    /// A pooled connection can be closed by the server just as we send on
    /// it. When writing the request fails there, the server cannot have
    /// read it, and it is sent once more on a new connection; a request
    /// that may have reached the provider is never sent again here
    /// (retries are `run`'s decision).
    async fn exchange(
        &self,
        req: Outgoing,
        connect_timeout: Duration,
    ) -> Result<(Connection, Head), ProviderError> {
        if let Some(mut conn) = self.pool.checkout() {
            match conn.write(&req.bytes).await {
                Ok(()) => return conn.read_head().await.map(|head| (conn, head)),
                Err(e) => {
                    debug!(error = %e, "a pooled connection failed before the request was written; opening a new one");
                }
            }
        }
        let mut conn = self.connect(connect_timeout).await?;
        conn.write(&req.bytes)
            .await
            .map_err(|e| ProviderError::Io(e.to_string()))?;
        drop(req);
        let head = conn.read_head().await?;
        Ok((conn, head))
    }

    /// Sends `req` on a pooled or new connection and returns the whole
    /// body of a 2xx answer (a non-streaming call). An HTTP error status
    /// becomes [`ProviderError::Status`] as in [`Endpoint::stream`]; a body
    /// longer than `limit` bytes is [`ProviderError::Malformed`]. A
    /// connection whose body was read to its end goes back to the pool.
    pub async fn call(
        &self,
        req: Outgoing,
        connect_timeout: Duration,
        limit: usize,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut conn = self.exchange_ok(req, connect_timeout, summarize).await?;
        let mut body = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut buf);
        loop {
            match std::future::poll_fn(|cx| conn.poll_body(cx, &mut read)).await {
                Ok(Some(n)) => {
                    if body.len() + n > limit {
                        return Err(ProviderError::Malformed(format!(
                            "response body longer than {limit} bytes"
                        )));
                    }
                    body.extend_from_slice(&read.filled()[..n]);
                }
                Ok(None) => break,
                Err(e) => return Err(e.scrubbed(&self.secrets)),
            }
        }
        self.pool.checkin(conn);
        Ok(body)
    }

    /// Sends `req` on a new connection and returns the response status,
    /// reading (and dropping) at most 64 KiB of body. For webhooks and other
    /// one-shot calls, bounded as a whole by `timeout`.
    pub async fn send(&self, req: Outgoing, timeout: Duration) -> Result<u16, ProviderError> {
        let call = async {
            let mut conn = self.connect(timeout).await?;
            conn.write(&req.bytes)
                .await
                .map_err(|e| ProviderError::Io(e.to_string()))?;
            let head = conn.read_head().await?;
            read_body(&mut conn, MAX_ERROR_BODY).await;
            Ok(head.status)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(ProviderError::Io(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )))
            })
    }
}

/// Up to `limit` bytes of the current response's body; what cannot be read
/// is left out.
async fn read_body(conn: &mut Connection, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut buf);
    while body.len() < limit {
        match std::future::poll_fn(|cx| conn.poll_body(cx, &mut read)).await {
            Ok(Some(n)) => body.extend_from_slice(&read.filled()[..n.min(limit - body.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The API key of a provider, as read from the environment at compile time.
#[derive(Clone)]
pub struct ApiKey {
    pub key: Option<String>,
    /// The variable it came from; set with no `key` when it was not set.
    pub env: Option<String>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("env", &self.env)
            .finish()
    }
}

impl ApiKey {
    /// The key as a sensitive header value (`prefix` + key), `None` when no
    /// key is configured, an error when its variable was not set.
    pub fn header(
        &self,
        provider: &str,
        prefix: &str,
    ) -> Result<Option<HeaderValue>, ProviderError> {
        match (&self.key, &self.env) {
            (Some(key), _) => {
                let mut v = HeaderValue::from_str(&format!("{prefix}{key}")).map_err(|_| {
                    ProviderError::Config(format!(
                        "the API key of provider \"{provider}\" is not a valid header value"
                    ))
                })?;
                v.set_sensitive(true);
                Ok(Some(v))
            }
            (None, Some(var)) => Err(ProviderError::Config(format!(
                "environment variable {var} is not set for provider \"{provider}\""
            ))),
            (None, None) => Ok(None),
        }
    }
}

/// The TLS client configuration (webpki roots, ring), built once. An error
/// (which the ring provider cannot produce today) fails the call, not the
/// process.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, ProviderError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
            .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| ProviderError::Config(format!("tls is unavailable: {e}")))
}

/// Reads `retry-after-ms` or `Retry-After` (seconds or HTTP date).
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(v).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = v.split_whitespace().collect();
        if parts.len() != 6 || parts[5] != "GMT" {
            return None;
        }
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2])? + 1;
        let s = format!(
            "{}-{:02}-{:02}T{}Z",
            parts[3],
            month,
            parts[1].parse::<u8>().ok()?,
            parts[4]
        );
        humantime::parse_rfc3339(&s).ok()
    })
}

/// The body of one upstream response, decoded into chunks. Owns the
/// connection: dropping it closes the socket, unless the stream ended
/// cleanly (see [`UpstreamStream::reusable`]); then the connection goes back
/// to the pool.
struct UpstreamStream<D> {
    /// Where a cleanly ended stream returns its connection.
    pool: Arc<Pool>,
    /// Scrubbed from every error before it is yielded.
    secrets: Secrets,
    /// `None` once the connection failed or closed.
    conn: Option<Connection>,
    parser: SseParser,
    decoder: D,
    events: Vec<SseEvent>,
    pending: VecDeque<Chunk>,
    /// Reported once the chunks decoded before it have been delivered.
    error: Option<ProviderError>,
    finished: bool,
    /// An error was reported or is pending.
    failed: bool,
    saw_end: bool,
    /// The consumer received [`Chunk::End`].
    end_delivered: bool,
}

impl<D> UpstreamStream<D> {
    /// Whether the connection may carry another call: the consumer received
    /// the provider's end marker and nothing failed. The connection itself
    /// decides the rest when the pool checks it out (the response allowed
    /// keep-alive, the body ended with nothing after it, the server has not
    /// closed it).
    ///
    /// The body need not have been read to its end: `run` drops the stream
    /// as soon as it sees [`Chunk::End`], sometimes before the chunked
    /// body's last bytes arrive.
    fn reusable(&self) -> bool {
        self.end_delivered && !self.failed && self.error.is_none() && self.conn.is_some()
    }

    fn fail(&mut self, e: ProviderError) {
        self.finished = true;
        self.failed = true;
        self.error.get_or_insert(e);
    }
}

impl<D> Drop for UpstreamStream<D> {
    fn drop(&mut self) {
        if !self.reusable() {
            // The connection drops after this: the socket closes at once.
            return;
        }
        if let Some(conn) = self.conn.take() {
            self.pool.checkin(conn);
        }
    }
}

impl<D: Decoder> UpstreamStream<D> {
    fn decode_events(&mut self) {
        let mut out = Vec::new();
        for ev in self.events.drain(..) {
            if let Err(e) = self.decoder.decode(&ev, &mut out) {
                self.failed = true;
                self.error = Some(rebuilt_scrubbed(&mut self.decoder, &ev, e, &self.secrets));
                self.finished = true;
                break;
            }
        }
        for c in out {
            self.saw_end |= c == Chunk::End;
            self.pending.push_back(c.scrubbed(&self.secrets));
        }
        self.events.clear();
    }
}

/// The error `decoder` gave for `ev`, built again from `ev` with its secrets
/// scrubbed when it held any, so that the decoder summarizes clean data
/// (its summary may cut the text, and a cut key is harder to find). The
/// decoder is not used again after an error, so decoding twice is safe.
fn rebuilt_scrubbed<D: Decoder>(
    decoder: &mut D,
    ev: &SseEvent,
    error: ProviderError,
    secrets: &Secrets,
) -> ProviderError {
    let std::borrow::Cow::Owned(data) = secrets.scrub(&ev.data) else {
        return error;
    };
    let clean = SseEvent {
        event: ev.event.clone(),
        data,
        id: ev.id.clone(),
    };
    let mut ignored = Vec::new();
    // Should the clean event decode (the secret was what made it fail), the
    // first error is kept; `scrubbed` still cleans it before it is yielded.
    decoder.decode(&clean, &mut ignored).err().unwrap_or(error)
}

impl<D> Unpin for UpstreamStream<D> {}

impl<D: Decoder> Stream for UpstreamStream<D> {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // Read into the stack, not into a buffer every open stream keeps,
        // and uninitialized: zeroing 8 KiB at every poll was a fifth of
        // Sluice's instructions per streamed request (callgrind).
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut buf);
        loop {
            if let Some(c) = this.pending.pop_front() {
                this.end_delivered |= c == Chunk::End;
                return Poll::Ready(Some(Ok(c)));
            }
            if let Some(e) = this.error.take() {
                return Poll::Ready(Some(Err(e.scrubbed(&this.secrets))));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_body(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(n))) => {
                    match this.parser.push(&read.filled()[..n], &mut this.events) {
                        Ok(()) => this.decode_events(),
                        Err(e) => {
                            this.decode_events();
                            this.fail(ProviderError::Malformed(e.to_string()));
                        }
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    this.fail(e);
                }
                Poll::Ready(Ok(None)) => {
                    this.parser.finish(&mut this.events);
                    this.decode_events();
                    this.finished = true;
                    if !this.saw_end {
                        this.fail(ProviderError::Truncated);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
