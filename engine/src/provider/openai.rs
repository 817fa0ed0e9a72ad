//! The OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama,
//! llama.cpp, Groq...).
//!
//! Each call opens its own connection and the returned stream owns it: the
//! hyper connection future is polled *inside* the stream, not in a spawned
//! task. Dropping the stream therefore closes the socket at once, which is
//! how timeouts, ceilings and client disconnects stop the upstream from
//! generating (and billing) for nobody.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::openai_wire::{self, OpenAiDecoder};
use super::sse::{SseEvent, SseParser};
use super::{Chunk, ChunkStream, Provider, ProviderError, ProviderRequest};

type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Longest error body read from a provider that answered with an HTTP error.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub struct OpenAiProvider {
    name: String,
    scheme_https: bool,
    host: String,
    port: u16,
    /// `/v1/chat/completions` under the base URL's path.
    path: String,
    authority: String,
    api_key: Option<String>,
    api_key_env: Option<String>,
}

impl OpenAiProvider {
    pub fn new(
        name: &str,
        base_url: Uri,
        api_key: Option<String>,
        api_key_env: Option<String>,
    ) -> Self {
        let https = base_url.scheme_str() == Some("https");
        let host = base_url.host().unwrap_or("localhost").to_string();
        let port = base_url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = format!("{}/chat/completions", base_url.path().trim_end_matches('/'));
        let authority = base_url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        Self {
            name: name.to_string(),
            scheme_https: https,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            path,
            authority,
            api_key,
            api_key_env,
        }
    }

    async fn connect(
        &self,
        timeout: Duration,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            ConnFuture,
        ),
        ProviderError,
    > {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| ProviderError::Connect(format!("{}:{}: {e}", self.host, self.port)))?;
            let _ = tcp.set_nodelay(true);
            if self.scheme_https {
                let server_name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| ProviderError::Config(format!("invalid host name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(tls_config())
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
}

async fn handshake<T>(
    io: T,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        ConnFuture,
    ),
    ProviderError,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProviderError::Connect(format!("http handshake: {e}")))?;
    Ok((sender, Box::pin(conn)))
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
            match config {
                Ok(c) => Arc::new(c),
                // The ring provider supports the default versions; this
                // cannot fail, but a request path must never panic.
                Err(_) => Arc::new(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("tls 1.3 is supported by ring")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                ),
            }
        })
        .clone()
}

/// Reads `Retry-After` (seconds or HTTP date) and `retry-after-ms`.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
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

impl Provider for OpenAiProvider {
    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>> {
        Box::pin(async move {
            let auth = match (&self.api_key, &self.api_key_env) {
                (Some(key), _) => {
                    let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                        ProviderError::Config(format!(
                            "the API key of provider \"{}\" is not a valid header value",
                            self.name
                        ))
                    })?;
                    v.set_sensitive(true);
                    Some(v)
                }
                (None, Some(var)) => {
                    return Err(ProviderError::Config(format!(
                        "environment variable {var} is not set for provider \"{}\"",
                        self.name
                    )));
                }
                (None, None) => None,
            };
            let body = serde_json::to_vec(&openai_wire::request_body(&request, true))
                .map_err(|e| ProviderError::Config(format!("cannot encode request: {e}")))?;
            let mut builder = Request::post(&self.path)
                .header(header::HOST, &self.authority)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "text/event-stream");
            if let Some(auth) = auth {
                builder = builder.header(header::AUTHORIZATION, auth);
            }
            let req = builder
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ProviderError::Config(format!("cannot build request: {e}")))?;

            let (mut sender, mut conn) = self.connect(request.connect_timeout).await?;
            // The connection must be driven while we wait for the headers.
            let response = tokio::select! {
                r = sender.send_request(req) => r.map_err(|e| ProviderError::Io(e.to_string()))?,
                r = &mut conn => {
                    return Err(ProviderError::Io(match r {
                        Ok(()) => "connection closed before the response".into(),
                        Err(e) => e.to_string(),
                    }));
                }
            };
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
                    message: openai_wire::summarize_error_body(status, &bytes),
                });
            }
            let stream: ChunkStream = Box::pin(UpstreamStream {
                conn: Some(conn),
                _sender: sender,
                body,
                parser: SseParser::new(),
                decoder: OpenAiDecoder::new(),
                events: Vec::new(),
                pending: VecDeque::new(),
                error: None,
                finished: false,
                saw_end: false,
            });
            Ok(stream)
        })
    }
}

/// The body of one upstream response, decoded into chunks. Owns the
/// connection: dropping it closes the socket.
struct UpstreamStream {
    conn: Option<ConnFuture>,
    _sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    body: Incoming,
    parser: SseParser,
    decoder: OpenAiDecoder,
    events: Vec<SseEvent>,
    pending: VecDeque<Chunk>,
    /// Reported once the chunks decoded before it have been delivered.
    error: Option<ProviderError>,
    finished: bool,
    saw_end: bool,
}

impl UpstreamStream {
    fn decode_events(&mut self) {
        let mut out = Vec::new();
        for ev in self.events.drain(..) {
            if let Err(e) = self.decoder.decode(&ev, &mut out) {
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

impl Stream for UpstreamStream {
    type Item = Result<Chunk, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(c) = this.pending.pop_front() {
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
                    this.finished = true;
                    return Poll::Ready(Some(Err(ProviderError::Io(e.to_string()))));
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        match this.parser.push(&data, &mut this.events) {
                            Ok(()) => this.decode_events(),
                            Err(e) => {
                                this.decode_events();
                                this.finished = true;
                                this.error
                                    .get_or_insert(ProviderError::Malformed(e.to_string()));
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(ProviderError::Io(e.to_string()))));
                }
                Poll::Ready(None) => {
                    this.parser.finish(&mut this.events);
                    this.decode_events();
                    this.finished = true;
                    if !this.saw_end {
                        this.error.get_or_insert(ProviderError::Truncated);
                    }
                }
            }
        }
    }
}
