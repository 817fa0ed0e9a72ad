//! The load: C concurrent HTTP/1.1 clients (hyper, one keep-alive
//! connection each) sending R streaming requests in total and reading every
//! SSE body to its end, with per-request timings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Who answers, which decides what a complete stream looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The mock: OpenAI chunks ending with `data: [DONE]`.
    Direct,
    /// Sluice: `start`, `delta`s, `usage`, `done` with `finish_reason: stop`.
    Sluice,
}

/// Where requests go.
#[derive(Clone, Debug)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    /// An `Authorization: Bearer` token to send.
    pub auth: Option<&'static str>,
    /// Events a complete stream has at least.
    pub min_events: u32,
}

/// How the load is applied.
#[derive(Clone, Debug)]
pub struct Plan {
    pub requests: usize,
    pub concurrency: usize,
    /// Client i connects at `i * connect_ramp / C` (before any request).
    pub connect_ramp: Duration,
    /// Client i sends its first request at `i * request_ramp / C` after
    /// all clients had their turn to connect.
    pub request_ramp: Duration,
    /// The whole phase stops here; unfinished requests count as failed.
    pub deadline: Duration,
    /// Open a new connection for every request instead of keeping it alive
    /// (an experiment: what one TCP connect per call costs).
    pub reconnect: bool,
    /// Multiplex the requests on HTTP/2 (h2c) connections, 100 streams
    /// each, instead of one HTTP/1.1 connection per client (Sluice only).
    pub http2: bool,
}

/// One successful request.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Request sent -> first byte of the first event.
    pub ttfe: Duration,
    /// Request sent -> the first content event complete (the mock's first
    /// `delta.content` chunk, Sluice's first `delta`): the second event.
    pub ttft: Duration,
    /// Request sent -> end of the body.
    pub total: Duration,
    pub events: u32,
}

/// What a phase produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub failed: usize,
    /// Failure kinds and how often each happened.
    pub errors: BTreeMap<String, usize>,
    /// First request sent -> last request finished.
    pub wall: Duration,
    /// Most streams open at once (response headers received, body not ended).
    pub peak_open: usize,
    /// Most requests in flight at once (sent, body not ended).
    pub peak_in_flight: usize,
    pub timed_out: bool,
    pub events: u64,
}

impl Outcome {
    /// Adds another round's figures: samples and counts add up, walls too
    /// (the rounds ran one after the other), peaks are the larger.
    pub fn absorb(&mut self, o: Outcome) {
        self.samples.extend(o.samples);
        self.failed += o.failed;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        self.wall += o.wall;
        self.peak_open = self.peak_open.max(o.peak_open);
        self.peak_in_flight = self.peak_in_flight.max(o.peak_in_flight);
        self.timed_out |= o.timed_out;
        self.events += o.events;
    }
}

#[derive(Default)]
struct Results {
    samples: Vec<Sample>,
    errors: BTreeMap<String, usize>,
    failed: usize,
    last_end: Option<Instant>,
}

struct Shared {
    target: Target,
    plan: Plan,
    next: AtomicUsize,
    open: AtomicUsize,
    peak_open: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    results: Mutex<Results>,
    connect_start: Instant,
    go: Instant,
    /// Shared HTTP/2 connections, when the plan asks for them.
    h2: Vec<hyper::client::conn::http2::SendRequest<Full<Bytes>>>,
}

impl Shared {
    fn fail(&self, kind: String) {
        let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
        r.failed += 1;
        *r.errors.entry(kind).or_insert(0) += 1;
        r.last_end = Some(Instant::now());
    }

    fn ok(&self, s: Sample) {
        let mut r = self.results.lock().unwrap_or_else(|p| p.into_inner());
        r.samples.push(s);
        r.last_end = Some(Instant::now());
    }
}

/// A client connection: HTTP/1.1 (one request at a time, its driver task
/// aborted on drop) or a handle on a shared HTTP/2 connection.
enum Conn {
    H1 {
        sender: SendRequest<Full<Bytes>>,
        driver: JoinHandle<()>,
    },
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Conn::H1 { driver, .. } = self {
            driver.abort();
        }
    }
}

impl Conn {
    async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        match self {
            Conn::H1 { sender, .. } => {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection: {e}"))?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("send: {e}"))
            }
            Conn::H2(sender) => {
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection: {e}"))?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("send: {e}"))
            }
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H1 { sender, driver })
}

/// An HTTP/2 (h2c, prior knowledge) connection and its driver task.
async fn connect_h2(
    addr: SocketAddr,
) -> Result<
    (
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        JoinHandle<()>,
    ),
    String,
> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

/// Streams per HTTP/2 connection (hyper's server allows 200).
const H2_STREAMS_PER_CONN: usize = 100;

/// Counts SSE events (blank-line terminators) across frame boundaries and
/// keeps the tail of the body to check how it ended.
struct Scanner {
    events: u32,
    last_was_nl: bool,
    tail: Vec<u8>,
    error_event: bool,
    ttft: Option<Duration>,
}

const TAIL: usize = 160;

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            events: 0,
            last_was_nl: false,
            tail: Vec::with_capacity(2 * TAIL),
            error_event: false,
            ttft: None,
        }
    }

    fn push(&mut self, data: &[u8], t0: Instant) {
        // The position of a `\n` not yet paired into a terminator (-1: the
        // last byte of the previous frame).
        let mut unpaired: Option<isize> = self.last_was_nl.then_some(-1);
        for i in memchr::memchr_iter(b'\n', data) {
            let i = i as isize;
            if unpaired == Some(i - 1) {
                unpaired = None;
                self.events += 1;
                if self.events == 2 && self.ttft.is_none() {
                    self.ttft = Some(t0.elapsed());
                }
            } else {
                unpaired = Some(i);
            }
        }
        self.last_was_nl = !data.is_empty() && unpaired == Some(data.len() as isize - 1);
        if memchr::memmem::find(data, b"event: error").is_some() {
            self.error_event = true;
        }
        self.tail.extend_from_slice(data);
        if self.tail.len() > 2 * TAIL {
            let cut = self.tail.len() - TAIL;
            self.tail.drain(..cut);
        }
    }

    /// Why the stream is not a complete success, if it is not.
    fn problem(&self, kind: Kind, min_events: u32) -> Option<String> {
        if self.error_event {
            return Some("error event".into());
        }
        let tail = &self.tail[..];
        let ended = match kind {
            Kind::Direct => tail.ends_with(b"data: [DONE]\n\n"),
            Kind::Sluice => {
                memchr::memmem::rfind(tail, b"event: done").is_some()
                    && tail.ends_with(b"{\"finish_reason\":\"stop\"}\n\n")
            }
        };
        if !ended {
            return Some("stream did not finish".into());
        }
        if self.events < min_events {
            return Some(format!("only {} events", self.events));
        }
        None
    }
}

/// One request on `conn`; times count from `started` if given (a connect
/// made for this request), else from just before the request is sent.
async fn one_request(
    conn: &mut Conn,
    shared: &Shared,
    started: Option<Instant>,
) -> Result<Sample, String> {
    let t = &shared.target;
    let req = if matches!(conn, Conn::H2(_)) {
        Request::post(format!("http://{}{}", t.addr, t.path))
    } else {
        Request::post(&t.path).header(header::HOST, t.addr.to_string())
    };
    let req = match t.auth {
        Some(key) => req.header(header::AUTHORIZATION, format!("Bearer {key}")),
        None => req,
    };
    let req = req
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(t.body.clone()))
        .map_err(|e| format!("request: {e}"))?;
    let t0 = started.unwrap_or_else(Instant::now);
    let flying = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.peak_in_flight.fetch_max(flying, Ordering::Relaxed);
    let _flying = OpenGuard(&shared.in_flight);
    let resp = conn.send(req).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status().as_u16()));
    }
    let open = shared.open.fetch_add(1, Ordering::Relaxed) + 1;
    shared.peak_open.fetch_max(open, Ordering::Relaxed);
    let _open = OpenGuard(&shared.open);
    let mut body = resp.into_body();
    let mut scan = Scanner::new();
    let mut ttfe = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            if ttfe.is_none() {
                ttfe = Some(t0.elapsed());
            }
            scan.push(&data, t0);
        }
    }
    let total = t0.elapsed();
    if let Some(p) = scan.problem(t.kind, t.min_events) {
        return Err(p);
    }
    Ok(Sample {
        ttfe: ttfe.unwrap_or(total),
        ttft: scan.ttft.unwrap_or(total),
        total,
        events: scan.events,
    })
}

struct OpenGuard<'a>(&'a AtomicUsize);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn worker(i: usize, shared: Arc<Shared>) {
    let plan = &shared.plan;
    let c = plan.concurrency.max(1) as u32;
    let offset = |ramp: Duration| ramp.mul_f64(i as f64 / f64::from(c));
    tokio::time::sleep_until(shared.connect_start + offset(plan.connect_ramp)).await;
    // Connect before the clock starts; retry briefly (listen backlogs).
    let mut conn = None;
    if !shared.h2.is_empty() {
        conn = Some(Conn::H2(shared.h2[i % shared.h2.len()].clone()));
    }
    for attempt in 0..5 {
        if conn.is_some() {
            break;
        }
        match connect(shared.target.addr).await {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(_) if attempt < 4 => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => {}
        }
    }
    tokio::time::sleep_until(shared.go + offset(plan.request_ramp)).await;
    loop {
        if shared.next.fetch_add(1, Ordering::Relaxed) >= plan.requests {
            break;
        }
        if conn.is_none() && !plan.reconnect {
            match connect(shared.target.addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.fail(e);
                    continue;
                }
            }
        }
        // With `reconnect`, the connect is part of the request's time.
        let mut started = None;
        if plan.reconnect {
            started = Some(Instant::now());
            match connect(shared.target.addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    shared.fail(e);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match one_request(c, &shared, started).await {
            Ok(s) => {
                shared.ok(s);
                if plan.reconnect {
                    conn = None;
                }
            }
            Err(e) => {
                shared.fail(e);
                if !matches!(conn, Some(Conn::H2(_))) {
                    conn = None;
                }
            }
        }
    }
}

/// Runs `plan` against `target`.
pub async fn run(target: Target, plan: Plan) -> Outcome {
    let c = plan.concurrency.max(1);
    let connect_start = Instant::now();
    // Everyone has had the chance to connect a little after the ramp.
    let settle = if c > 1000 {
        Duration::from_millis(1500)
    } else {
        Duration::from_millis(100)
    };
    let go = connect_start + plan.connect_ramp + settle;
    let mut h2 = Vec::new();
    let mut h2_drivers = Vec::new();
    if plan.http2 {
        for _ in 0..c.div_ceil(H2_STREAMS_PER_CONN) {
            match connect_h2(target.addr).await {
                Ok((s, d)) => {
                    h2.push(s);
                    h2_drivers.push(d);
                }
                Err(e) => {
                    return Outcome {
                        failed: plan.requests,
                        errors: [(e, plan.requests)].into_iter().collect(),
                        ..Outcome::default()
                    };
                }
            }
        }
    }
    let shared = Arc::new(Shared {
        target,
        plan: plan.clone(),
        next: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        peak_open: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
        results: Mutex::new(Results::default()),
        connect_start,
        go,
        h2,
    });
    let mut set = tokio::task::JoinSet::new();
    for i in 0..c {
        set.spawn(worker(i, shared.clone()));
    }
    let deadline = go + plan.deadline;
    let timed_out =
        tokio::time::timeout_at(deadline, async { while set.join_next().await.is_some() {} })
            .await
            .is_err();
    set.abort_all();
    while set.join_next().await.is_some() {}
    for d in h2_drivers {
        d.abort();
    }
    let mut r = std::mem::take(&mut *shared.results.lock().unwrap_or_else(|p| p.into_inner()));
    let done = r.samples.len() + r.failed;
    if done < plan.requests {
        let missing = plan.requests - done;
        r.failed += missing;
        *r.errors.entry("deadline".into()).or_insert(0) += missing;
    }
    let end = if timed_out {
        deadline
    } else {
        r.last_end.unwrap_or(go)
    };
    Outcome {
        events: r.samples.iter().map(|s| u64::from(s.events)).sum(),
        samples: r.samples,
        failed: r.failed,
        errors: r.errors,
        wall: end.saturating_duration_since(go),
        peak_open: shared.peak_open.load(Ordering::Relaxed),
        peak_in_flight: shared.peak_in_flight.load(Ordering::Relaxed),
        timed_out,
    }
}

/// A request over a raw socket that reads `events` SSE events, waits
/// `linger`, then closes the socket. Returns the CLOCK_MONOTONIC time of
/// the close (ns). For measuring how fast Sluice closes its upstream after
/// its client leaves.
pub async fn read_then_close(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    events: u32,
    linger: Duration,
) -> Result<u64, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         accept: text/event-stream\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    tcp.write_all(body)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = 0u32;
    let mut last_nl = false;
    while seen < events {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .map_err(|_| format!("no event within 10 s after {seen}"))?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {seen} events"));
        }
        // Chunk framing uses CRLF, so a bare `\n\n` is an SSE terminator.
        for &b in &buf[..n] {
            if b == b'\n' {
                if last_nl {
                    seen += 1;
                    last_nl = false;
                    continue;
                }
                last_nl = true;
            } else {
                last_nl = false;
            }
        }
    }
    tokio::time::sleep(linger).await;
    let at = super::procs::monotonic_ns();
    drop(tcp);
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_across_splits() {
        let body = b"data: a\n\ndata: b\n\nevent: done\ndata: {\"finish_reason\":\"stop\"}\n\n";
        for split in 1..body.len() {
            let mut s = Scanner::new();
            let t0 = Instant::now();
            s.push(&body[..split], t0);
            s.push(&body[split..], t0);
            assert_eq!(s.events, 3, "split at {split}");
            assert!(s.problem(Kind::Sluice, 3).is_none());
        }
    }
}
