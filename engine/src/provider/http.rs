//! What the HTTP providers share: HTTP/1.1 calls on keep-alive connections
//! (plain TCP or rustls TLS, a new connection bounded by the connect
//! timeout), HTTP error statuses with `Retry-After`, and the response body
//! decoded into chunks by a wire [`Decoder`].
//!
//! The returned stream owns its connection: the hyper connection future is
//! polled *inside* the stream, not in a spawned task. Dropping the stream
//! therefore closes the socket at once, which is how timeouts, ceilings and
//! client disconnects stop the upstream from generating (and billing) for
//! nobody.
//!
//! The one exception is a stream that ended cleanly: the consumer received
//! the provider's end marker, nothing failed, and the response allows
//! keep-alive. Its connection goes back to the endpoint's pool instead (see
//! `pool.rs`), and a later call of the same provider sends on it. A call
//! takes the most recently returned live connection, or opens a new one.

use std::collections::VecDeque;
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream};
use http::{HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::anthropic_wire::AnthropicDecoder;
use super::openai_wire::OpenAiDecoder;
use super::pool::{ConnFuture, Pool, Sender};
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
    /// The endpoint's path, e.g. `/v1/chat/completions`.
    path: String,
    /// The `Host` header.
    authority: String,
    /// Idle keep-alive connections for [`Endpoint::stream`].
    pool: Arc<Pool>,
}

impl Endpoint {
    /// `route` (e.g. `/messages`) under the base URL's path.
    pub fn new(base_url: &Uri, route: &str) -> Self {
        let https = base_url.scheme_str() == Some("https");
        let host = base_url.host().unwrap_or("localhost");
        let port = base_url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = base_url
            .authority()
            .map_or_else(|| host.to_string(), |a| a.as_str().to_string());
        Self {
            https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path: format!("{}{route}", base_url.path().trim_end_matches('/')),
            authority,
            pool: Arc::new(Pool::new()),
        }
    }

    /// A JSON POST to this endpoint that asks for an event stream.
    pub fn post(
        &self,
        headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>,
        body: Vec<u8>,
    ) -> Result<Request<Full<Bytes>>, ProviderError> {
        let mut builder = Request::post(&self.path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ProviderError::Config(format!("cannot build request: {e}")))
    }

    /// Opens a connection (TCP, then TLS for https), bounded by `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<(Sender, ConnFuture), ProviderError> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ProviderError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            if self.https {
                let server_name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| ProviderError::Config(format!("invalid host name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(tls_config()?)
                    .connect(server_name, tcp)
                    .await
                    .map_err(|e| {
                        ProviderError::Connect(format!("tls handshake with {}: {e}", self.host))
                    })?;
                handshake(tls).await
            } else {
                handshake(tcp).await
            }
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
    pub async fn stream<D: Decoder>(
        &self,
        req: Request<Full<Bytes>>,
        connect_timeout: Duration,
        decoder: D,
        summarize: fn(u16, &[u8]) -> String,
    ) -> Result<ChunkStream, ProviderError> {
        let (sender, mut conn, response) = self.exchange(req, connect_timeout).await?;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let retry_after = retry_after(&parts.headers);
            let status = parts.status.as_u16();
            let read = async { Limited::new(body, MAX_ERROR_BODY).collect().await };
            let bytes = tokio::select! {
                r = read => r.map(|c| c.to_bytes()).unwrap_or_default(),
                _ = &mut conn => Bytes::new(),
            };
            return Err(ProviderError::Status {
                status,
                retry_after,
                message: summarize(status, &bytes),
            });
        }
        Ok(Box::pin(UpstreamStream {
            pool: self.pool.clone(),
            keep_alive: allows_reuse(&parts),
            conn: Some(conn),
            sender: Some(sender),
            body: Some(body),
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

    /// Sends `req` on the most recently returned live idle connection, or
    /// on a new one (bounded by `connect_timeout`), and waits for the
    /// response headers.
    ///
    /// A pooled connection can be closed by the server just as we send on
    /// it. When hyper gives the request back (it never started writing it),
    /// the request is sent once more on a new connection; a request that
    /// may have reached the provider is never sent again here (retries are
    /// `run`'s decision).
    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        connect_timeout: Duration,
    ) -> Result<(Sender, ConnFuture, Response<Incoming>), ProviderError> {
        let req = match self.pool.checkout() {
            Some((sender, conn)) => match send_on(sender, conn, req).await {
                Ok(done) => return Ok(done),
                Err(SendError::Unsent(req, _)) => *req,
                Err(SendError::Failed(e)) => return Err(e),
            },
            None => req,
        };
        let (sender, conn) = self.connect(connect_timeout).await?;
        send_on(sender, conn, req).await.map_err(|e| match e {
            SendError::Unsent(_, e) | SendError::Failed(e) => e,
        })
    }
}

/// Why [`send_on`] has no response.
enum SendError {
    /// The connection ended before hyper started writing the request: it
    /// is given back, and can be sent elsewhere.
    Unsent(Box<Request<Full<Bytes>>>, ProviderError),
    /// The request may have been sent.
    Failed(ProviderError),
}

impl SendError {
    fn from_hyper(mut e: TrySendError<Request<Full<Bytes>>>) -> Self {
        match e.take_message() {
            Some(req) => {
                SendError::Unsent(Box::new(req), ProviderError::Io(e.into_error().to_string()))
            }
            None => SendError::Failed(ProviderError::Io(e.into_error().to_string())),
        }
    }
}

/// Sends `req` on a connection, driving the connection while it waits for
/// the response headers.
async fn send_on(
    mut sender: Sender,
    mut conn: ConnFuture,
    req: Request<Full<Bytes>>,
) -> Result<(Sender, ConnFuture, Response<Incoming>), SendError> {
    let mut sent = pin!(sender.try_send_request(req));
    let first = tokio::select! {
        r = &mut sent => Ok(r),
        r = &mut conn => Err(r),
    };
    let ended = match first {
        Ok(Ok(response)) => return Ok((sender, conn, response)),
        Ok(Err(e)) => return Err(SendError::from_hyper(e)),
        Err(ended) => ended,
    };
    let closed = ProviderError::Io(match ended {
        Ok(()) => "connection closed before the response".into(),
        Err(e) => e.to_string(),
    });
    // Dropping the connection drops the requests hyper queued but did not
    // start to write; each comes back through its `sent` future, which is
    // then ready.
    drop(conn);
    match sent.now_or_never() {
        Some(Err(mut e)) => match e.take_message() {
            Some(req) => Err(SendError::Unsent(Box::new(req), closed)),
            None => Err(SendError::Failed(closed)),
        },
        _ => Err(SendError::Failed(closed)),
    }
}

/// Whether a response lets the connection carry another request: HTTP/1.1
/// without `Connection: close` (an HTTP/1.0 server is not kept, even if it
/// offers keep-alive).
fn allows_reuse(parts: &http::response::Parts) -> bool {
    parts.version == http::Version::HTTP_11
        && !parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
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

async fn handshake<T>(io: T) -> Result<(Sender, ConnFuture), ProviderError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProviderError::Connect(format!("http handshake: {e}")))?;
    Ok((sender, Box::pin(conn)))
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
    /// The response allows another request on its connection.
    keep_alive: bool,
    /// `None` once it resolved (the connection is closed).
    conn: Option<ConnFuture>,
    /// Kept for the pool; `None` only after it went there.
    sender: Option<Sender>,
    /// `None` only when the stream is being dropped.
    body: Option<Incoming>,
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
    /// the provider's end marker, nothing failed, the server did not ask to
    /// close, and the connection is still open.
    ///
    /// The body need not have been read to its end: `run` drops the stream
    /// as soon as it sees [`Chunk::End`], usually before the chunked body's
    /// last bytes arrive. hyper reads them when the pool next polls the
    /// connection; if more than the body's end is left, or it has not
    /// arrived, hyper closes the connection and the pool discards it.
    fn reusable(&self) -> bool {
        self.end_delivered
            && !self.failed
            && self.error.is_none()
            && self.keep_alive
            && self.conn.is_some()
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
            // The fields drop after this: the socket closes at once.
            return;
        }
        // Drop the body first, so that hyper drains or closes the rest of
        // it when the connection is next polled.
        self.body = None;
        if let (Some(sender), Some(conn)) = (self.sender.take(), self.conn.take()) {
            self.pool.checkin(sender, conn);
        }
    }
}

impl<D: Decoder> UpstreamStream<D> {
    fn decode_events(&mut self) {
        let mut out = Vec::new();
        for ev in self.events.drain(..) {
            if let Err(e) = self.decoder.decode(&ev, &mut out) {
                self.failed = true;
                self.error = Some(e);
                self.finished = true;
                break;
            }
        }
        for c in out {
            self.saw_end |= c == Chunk::End;
            self.pending.push_back(c);
        }
        self.events.clear();
    }
}

// Nothing in it is structurally pinned: the connection future is boxed.
impl<D> Unpin for UpstreamStream<D> {}

impl<D: Decoder> Stream for UpstreamStream<D> {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(c) = this.pending.pop_front() {
                this.end_delivered |= c == Chunk::End;
                return Poll::Ready(Some(Ok(c)));
            }
            if let Some(e) = this.error.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            if let Some(conn) = this.conn.as_mut()
                && let Poll::Ready(r) = conn.as_mut().poll(cx)
            {
                this.conn = None;
                if let Err(e) = r {
                    this.fail(ProviderError::Io(e.to_string()));
                    continue;
                }
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match this.parser.push(&data, &mut this.events) {
                            Ok(()) => this.decode_events(),
                            Err(e) => {
                                this.decode_events();
                                this.fail(ProviderError::Malformed(e.to_string()));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.fail(ProviderError::Io(e.to_string()));
                }
                Poll::Ready(None) => {
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

impl Endpoint {
    /// Sends `req` on a new connection and returns the response status,
    /// reading (and dropping) at most 64 KiB of body. For webhooks and other
    /// one-shot calls, bounded as a whole by `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<u16, ProviderError> {
        let call = async {
            let (mut sender, mut conn) = self.connect(timeout).await?;
            let response = tokio::select! {
                r = sender.send_request(req) => r.map_err(|e| ProviderError::Io(e.to_string()))?,
                r = &mut conn => {
                    return Err(ProviderError::Io(match r {
                        Ok(()) => "connection closed before the response".into(),
                        Err(e) => e.to_string(),
                    }));
                }
            };
            let status = response.status().as_u16();
            let read = async {
                Limited::new(response.into_body(), MAX_ERROR_BODY)
                    .collect()
                    .await
            };
            tokio::select! {
                _ = read => {},
                _ = &mut conn => {},
            }
            Ok(status)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_static(k),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn retry_after_reads_ms_seconds_and_dates() {
        let ms = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
        assert_eq!(retry_after(&ms), Some(Duration::from_millis(1500)));
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 7 ")])),
            Some(Duration::from_secs(7))
        );
        // A date in the past means "now".
        assert_eq!(
            retry_after(&headers(&[(
                "retry-after",
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )])),
            Some(Duration::ZERO)
        );
        let future = httpdate_parse("Fri, 01 Jan 2100 00:00:00 GMT").unwrap();
        assert!(future > std::time::SystemTime::now());
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "-1")])), None);
        assert_eq!(retry_after(&http::HeaderMap::new()), None);
    }

    #[test]
    fn endpoint_joins_paths_and_keeps_the_authority() {
        let e = Endpoint::new(
            &"https://api.anthropic.com/v1/".parse().unwrap(),
            "/messages",
        );
        assert_eq!(
            (e.https, e.host.as_str(), e.port, e.path.as_str()),
            (true, "api.anthropic.com", 443, "/v1/messages")
        );
        let e = Endpoint::new(
            &"http://[::1]:8080/v1".parse().unwrap(),
            "/chat/completions",
        );
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 8080, "[::1]:8080")
        );
    }

    #[test]
    fn only_http_1_1_without_connection_close_is_reused() {
        let parts = |version, connection: Option<&str>| {
            let mut b = http::Response::builder().version(version);
            if let Some(c) = connection {
                b = b.header(header::CONNECTION, c);
            }
            b.body(()).unwrap().into_parts().0
        };
        assert!(allows_reuse(&parts(http::Version::HTTP_11, None)));
        assert!(allows_reuse(&parts(
            http::Version::HTTP_11,
            Some("keep-alive")
        )));
        assert!(!allows_reuse(&parts(http::Version::HTTP_11, Some("close"))));
        assert!(!allows_reuse(&parts(
            http::Version::HTTP_11,
            Some("Upgrade, Close")
        )));
        assert!(!allows_reuse(&parts(
            http::Version::HTTP_10,
            Some("keep-alive")
        )));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_a_closed_connection_never_wrote_comes_back() {
        // The server accepts and closes at once: a pooled connection that
        // died after the pool's check, just before the send.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        drop(listener.accept().await.unwrap());
        let (sender, conn) = handshake(tcp).await.unwrap();
        // Let the FIN arrive (the paused clock turns the I/O driver first).
        tokio::time::sleep(Duration::from_millis(10)).await;
        let endpoint = Endpoint::new(&"http://127.0.0.1:1/v1".parse().unwrap(), "/x");
        let req = endpoint.post([], b"{}".to_vec()).unwrap();
        match send_on(sender, conn, req).await {
            Err(SendError::Unsent(req, _)) => {
                assert_eq!(req.uri(), "/v1/x");
                let body = req.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(body, Bytes::from_static(b"{}"));
            }
            Err(SendError::Failed(e)) => panic!("the request was not given back: {e}"),
            Ok(_) => panic!("a closed connection answered"),
        }
    }

    /// A raw HTTP/1.1 server that answers every request with a chunked SSE
    /// stream up to `[DONE]`, then, 1 s later, `tail`. Returns its address
    /// and how many connections it accepted.
    async fn late_tail_server(
        tail: &'static [u8],
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const EVENTS: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        // The request: its head and a Content-Length body.
                        loop {
                            let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let len: usize = text[..end]
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .map_or(0, |v| v.trim().parse().unwrap());
                                if buf.len() >= end + 4 + len {
                                    buf.drain(..end + 4 + len);
                                    break;
                                }
                            }
                            match sock.read(&mut tmp).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                            }
                        }
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        let chunk = format!("{:x}\r\n{EVENTS}\r\n", EVENTS.len());
                        let _ = sock.write_all(format!("{head}{chunk}").as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = sock.write_all(tail).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// One call read up to `Chunk::End` and dropped there, as `run` does.
    async fn call_until_end(endpoint: &Endpoint) {
        use futures_util::StreamExt;
        let req = endpoint.post([], b"{}".to_vec()).unwrap();
        let mut s = endpoint
            .stream(req, Duration::from_secs(1), OpenAiDecoder::new(), |_, _| {
                String::new()
            })
            .await
            .unwrap();
        while let Some(c) = s.next().await {
            if c.unwrap() == Chunk::End {
                return;
            }
        }
        panic!("no end marker");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_at_its_end_marker_is_reused_once_the_body_ends() {
        // The body's last chunk comes after the stream was dropped: hyper
        // reads it when the pool checks the connection out.
        let (addr, accepted) = late_tail_server(b"0\r\n\r\n").await;
        let uri = format!("http://{addr}/v1").parse().unwrap();
        let endpoint = Endpoint::new(&uri, "/chat/completions");
        call_until_end(&endpoint).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        call_until_end(&endpoint).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_more_than_the_body_end_left_is_not_reused() {
        // After `[DONE]` the server sends more data instead of ending the
        // body: the connection is closed at checkout, not used.
        let (addr, accepted) = late_tail_server(b"6\r\n: more\r\n").await;
        let uri = format!("http://{addr}/v1").parse().unwrap();
        let endpoint = Endpoint::new(&uri, "/chat/completions");
        call_until_end(&endpoint).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        call_until_end(&endpoint).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn api_key_header_is_sensitive_and_never_debug_printed() {
        let k = ApiKey {
            key: Some("sk-secret".into()),
            env: Some("KEY".into()),
        };
        let v = k.header("p", "Bearer ").unwrap().unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v, "Bearer sk-secret");
        assert!(!format!("{k:?}").contains("sk-secret"));
        let unset = ApiKey {
            key: None,
            env: Some("KEY".into()),
        };
        assert!(matches!(
            unset.header("p", ""),
            Err(ProviderError::Config(m)) if m.contains("KEY")
        ));
        let none = ApiKey {
            key: None,
            env: None,
        };
        assert!(none.header("p", "").unwrap().is_none());
    }
}
