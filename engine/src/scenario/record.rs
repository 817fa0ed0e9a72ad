//! `sluice record`: a recording proxy. Clients (or a Sluice provider whose
//! `base_url` points here) send requests as they would to the provider;
//! each one is forwarded to the upstream with its path appended to the
//! upstream URL's path, its headers passed through (the API key included,
//! as the client sent it) except hop-by-hop ones, `Host` (the upstream's)
//! and `Accept-Encoding` (so the body comes back, and is saved, as plain
//! text). The answer streams back to the client as it arrives; a 2xx
//! `text/event-stream` body is also saved byte-exact, with the time of
//! each event in a `.timing` sidecar (see [`sluice_testkit::Timing`]).
//!
//! The first recording goes to `--out FILE`, the next ones to `FILE`
//! with `.2`, `.3`... before its extension. Everything runs on tokio's
//! clock, so a test can record a paced mock under a paused clock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Uri, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_testkit::{Recording, Timing};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What became of one proxied request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub path: String,
    pub status: u16,
    /// Where the body was saved; `None` when it was not an event stream.
    pub file: Option<PathBuf>,
    pub events: usize,
    pub bytes: usize,
    /// Why nothing was saved, or what went wrong.
    pub note: Option<String>,
}

#[derive(Default)]
struct Log {
    saved: Mutex<Vec<Saved>>,
    changed: Notify,
    /// Requests accepted so far (numbers the output files).
    started: Mutex<usize>,
}

struct Shared {
    upstream: Uri,
    out: PathBuf,
    log: Log,
}

/// A running recording proxy; it stops when dropped.
pub struct Recorder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    /// Listens on `listen` and forwards to `upstream` (an http:// or
    /// https:// URL, e.g. `https://api.openai.com`).
    pub async fn start(upstream: &str, out: &Path, listen: SocketAddr) -> anyhow::Result<Recorder> {
        let uri: Uri = upstream
            .parse()
            .ok()
            .filter(|u: &Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "invalid upstream \"{upstream}\", expected an http:// or https:// URL"
                )
            })?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: uri,
            out: out.to_path_buf(),
            log: Log::default(),
        });
        let task = tokio::spawn(accept(listener, shared.clone()));
        Ok(Recorder { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What has been proxied so far.
    pub fn saved(&self) -> Vec<Saved> {
        lock(&self.shared.log.saved).clone()
    }

    /// Waits (on tokio's clock) until `n` requests are finished; returns
    /// them, or `None` after `timeout`.
    pub async fn wait_saved(&self, n: usize, timeout: Duration) -> Option<Vec<Saved>> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.log.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let saved = self.saved();
            if saved.len() >= n {
                return Some(saved);
            }
            tokio::time::timeout_at(deadline, notified).await.ok()?;
        }
    }
}

/// `sluice record`: proxies until `stop` resolves or `count` requests are
/// done, printing what became of each to stderr.
pub async fn record_command(
    upstream: &str,
    out: &Path,
    listen: SocketAddr,
    count: Option<usize>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let recorder = Recorder::start(upstream, out, listen).await?;
    let addr = recorder.addr();
    eprintln!(
        "recording: http://{addr} -> {upstream} (point a provider's base_url at http://{addr}/v1); Ctrl-C stops"
    );
    tokio::pin!(stop);
    let mut reported = 0;
    while count.is_none_or(|n| reported < n) {
        let saved = tokio::select! {
            s = recorder.wait_saved(reported + 1, Duration::from_secs(3600)) => s,
            () = &mut stop => break,
        };
        let Some(saved) = saved else { continue };
        for s in &saved[reported..] {
            match &s.file {
                Some(f) => eprintln!(
                    "{} {}: saved {} events, {} bytes to {} (+ .timing)",
                    s.status,
                    s.path,
                    s.events,
                    s.bytes,
                    f.display()
                ),
                None => eprintln!(
                    "{} {}: {}",
                    s.status,
                    s.path,
                    s.note.as_deref().unwrap_or("not recorded")
                ),
            }
        }
        reported = saved.len();
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file of recording number `n` (1-based): `out`, then `stem.N.ext`.
pub fn numbered(out: &Path, n: usize) -> PathBuf {
    if n <= 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = match (stem, out.extension()) {
        (Some(s), Some(e)) => format!("{s}.{n}.{}", e.to_string_lossy()),
        (Some(s), None) => format!("{s}.{n}"),
        _ => format!("recording.{n}"),
    };
    out.with_file_name(name)
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            async move { Ok::<_, Infallible>(proxy(shared, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the proxy sets itself.
const DROPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "accept-encoding",
];

fn pass_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let named_in_connection: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if !DROPPED.contains(&n) && !named_in_connection.iter().any(|c| c == n) {
            to.append(name.clone(), value.clone());
        }
    }
}

type ProxyBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

fn plain(status: u16, msg: String) -> Response<ProxyBody> {
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(msg))));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    resp
}

async fn proxy(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let number = {
        let mut n = lock(&shared.log.started);
        *n += 1;
        *n
    };
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(400, format!("cannot read the request body: {e}")),
    };
    let up = &shared.upstream;
    let target = format!("{}{path}", up.path().trim_end_matches('/'));
    let mut builder = Request::builder().method(parts.method).uri(target);
    if let Some(h) = builder.headers_mut() {
        pass_headers(&parts.headers, h);
        if let Some(a) = up
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            h.insert(header::HOST, a);
        }
    }
    let Ok(upstream_req) = builder.body(Full::new(body)) else {
        return plain(400, "cannot build the upstream request".into());
    };
    let sent_at = Instant::now();
    let (mut sender, conn) = match connect(up).await {
        Ok(v) => v,
        Err(e) => {
            return plain(
                502,
                format!("sluice record: cannot reach the upstream: {e}"),
            );
        }
    };
    let conn = tokio::spawn(conn);
    let resp = match sender.send_request(upstream_req).await {
        Ok(r) => r,
        Err(e) => {
            conn.abort();
            return plain(502, format!("sluice record: the upstream failed: {e}"));
        }
    };
    let headers_at = Instant::now();
    let (parts, body) = resp.into_parts();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let save = parts.status.is_success() && is_sse;
    let mut out = Response::builder().status(parts.status);
    if let Some(h) = out.headers_mut() {
        pass_headers(&parts.headers, h);
    }
    let (tx, rx) = mpsc::channel(64);
    let job = Pump {
        shared: shared.clone(),
        path,
        status: parts.status.as_u16(),
        file: save.then(|| numbered(&shared.out, number)),
        sent_at,
        headers_at,
    };
    tokio::spawn(async move {
        job.run(body, tx).await;
        conn.abort();
    });
    out.body(http_body_util::Either::Right(ChannelBody(rx)))
        .unwrap_or_else(|e| plain(500, format!("cannot build the response: {e}")))
}

/// Copies the upstream body to the client, timing each event.
struct Pump {
    shared: Arc<Shared>,
    path: String,
    status: u16,
    file: Option<PathBuf>,
    sent_at: Instant,
    headers_at: Instant,
}

impl Pump {
    async fn run(self, mut body: Incoming, tx: mpsc::Sender<Bytes>) {
        let mut all = Vec::new();
        let mut splitter = Splitter::default();
        let mut times = Vec::new();
        let mut note = None;
        let mut client_gone = false;
        loop {
            match body.frame().await {
                None => break,
                Some(Err(e)) => {
                    note = Some(format!("the upstream body failed: {e}"));
                    break;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let now = Instant::now();
                    all.extend_from_slice(&data);
                    for _ in 0..splitter.push(&data) {
                        times.push(now);
                    }
                    if !client_gone && tx.send(data).await.is_err() {
                        // Keep recording: the body is what the provider sent.
                        client_gone = true;
                    }
                }
            }
        }
        drop(tx);
        let mut saved = Saved {
            path: self.path,
            status: self.status,
            file: None,
            events: 0,
            bytes: all.len(),
            note,
        };
        match &self.file {
            None => {
                saved.note.get_or_insert_with(|| {
                    format!("not recorded: HTTP {} without an event stream", self.status)
                });
            }
            Some(file) => match write(file, &all, &times, self.sent_at, self.headers_at) {
                Ok(events) => {
                    saved.events = events;
                    saved.file = Some(file.clone());
                }
                Err(e) => saved.note = Some(e),
            },
        }
        lock(&self.shared.log.saved).push(saved);
        self.shared.log.changed.notify_waiters();
    }
}

/// Writes the body and its timing; returns the number of events.
fn write(
    file: &Path,
    body: &[u8],
    times: &[Instant],
    sent_at: Instant,
    headers_at: Instant,
) -> Result<usize, String> {
    let rec = Recording::parse(file, body, None)
        .map_err(|e| format!("the upstream body is not a valid stream, not saved: {e}"))?;
    let end = times.last().copied().unwrap_or(headers_at);
    let mut prev = headers_at;
    let mut events = Vec::with_capacity(rec.events.len());
    for i in 0..rec.events.len() {
        // A last event without its blank line completes at the end.
        let t = times.get(i).copied().unwrap_or(end);
        events.push(t.saturating_duration_since(prev));
        prev = t;
    }
    let timing = Timing {
        headers: headers_at.saturating_duration_since(sent_at),
        events,
    };
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(file, body).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sidecar = Timing::sidecar_path(file);
    std::fs::write(&sidecar, timing.render(&name))
        .map_err(|e| format!("cannot write {}: {e}", sidecar.display()))?;
    Ok(rec.events.len())
}

/// Counts SSE events as their terminating blank line arrives, with the
/// same rules as the testkit's splitter (`\n` or `\r\n` line ends; blank
/// lines before any field belong to no event).
#[derive(Default)]
struct Splitter {
    line: Vec<u8>,
    has_content: bool,
}

impl Splitter {
    /// Feeds bytes; returns how many events they completed.
    fn push(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        for &b in data {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let blank = self.line.is_empty() || self.line == b"\r";
            if blank && self.has_content {
                done += 1;
                self.has_content = false;
            } else if !blank {
                self.has_content = true;
            }
            self.line.clear();
        }
        done
    }
}

/// A response body fed by a channel.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Conn = Pin<Box<dyn Future<Output = ()> + Send>>;

async fn connect(up: &Uri) -> Result<(Sender, Conn), String> {
    let https = up.scheme_str() == Some("https");
    let host = up.host().unwrap_or("localhost");
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = up.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("{host}:{port}: connect timed out"))?
    .map_err(|e| format!("{host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls is unavailable: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("invalid host name {host}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls handshake with {host}: {e}"))?;
        handshake(tls).await
    } else {
        handshake(tcp).await
    }
}

async fn handshake<T>(io: T) -> Result<(Sender, Conn), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    Ok((
        sender,
        Box::pin(async move {
            let _ = conn.await;
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_counts_like_the_testkit() {
        let mut s = Splitter::default();
        assert_eq!(s.push(b"\ndata: a\n"), 0);
        assert_eq!(s.push(b"\nevent: x\r\ndata: b\r"), 1);
        assert_eq!(s.push(b"\n\r\n\n\n"), 1);
        assert_eq!(s.push(b"data: c"), 0);
    }

    #[test]
    fn later_recordings_are_numbered() {
        let p = Path::new("dir/rec.sse");
        assert_eq!(numbered(p, 1), PathBuf::from("dir/rec.sse"));
        assert_eq!(numbered(p, 3), PathBuf::from("dir/rec.3.sse"));
    }
}
