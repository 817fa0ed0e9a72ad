//! The `soak` workload: a long run of mixed traffic through one `sluice
//! serve` (ok streams, non-streaming answers, idle timeouts, clients that
//! leave mid-stream, invalid requests, tool loops on a SQLite database),
//! with Sluice's memory, descriptors and ledger files sampled all along.
//! The claim it checks: after a warm-up, none of them grows with the number
//! of requests served (the ledger's rows aside: one per request by design).
//!
//! Three mocks, one per behaviour: `ok` streams 32 tokens 2 ms apart with usage, `stall`
//! goes silent after 4 events (the `stall` pipeline's idle timeout is
//! 200 ms), `tools` answers in turn with a `lookup_order` call and with
//! text (a rotation of two replies in `sluice mock --config`). The turns
//! only line up when one tool conversation runs at a time, so the tool
//! loops have a lane of their own: one client, next to the C mixed clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::soak_report::{Sample, Soak, sample};
use super::*;

/// What one request of the soak does, and what it must get back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// `ok` pipeline, streamed to `done` with a `usage` event.
    Ok,
    /// `ok` pipeline with `"stream": false`: one JSON answer.
    Whole,
    /// `stall` pipeline: `error` event `timeout.idle`, then `done`.
    Timeout,
    /// `ok` pipeline: the client reads a few events and closes its socket.
    Disconnect,
    /// Bad JSON (400), an unknown field (400) or a text/plain body (415):
    /// refused before any provider call, but each one is a ledger row.
    Invalid,
    /// `tools` pipeline: `tool_call`, `tool_result` (a row of the shop
    /// database), the answer, `done`.
    Tool,
}

pub(crate) const TRAFFIC: [Traffic; 6] = [
    Traffic::Ok,
    Traffic::Whole,
    Traffic::Timeout,
    Traffic::Disconnect,
    Traffic::Invalid,
    Traffic::Tool,
];

impl Traffic {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Traffic::Ok => "ok",
            Traffic::Whole => "whole",
            Traffic::Timeout => "timeout",
            Traffic::Disconnect => "disconn",
            Traffic::Invalid => "invalid",
            Traffic::Tool => "tool",
        }
    }
}

/// The mixed clients' rotation (tool loops run in their own lane): 40% ok,
/// 10% non-streaming, 10% timeouts, 15% disconnects, 25% invalid. Client i
/// starts at slot i, so the kinds are spread over the clients at any time.
const MIX: [Traffic; 20] = [
    Traffic::Ok,
    Traffic::Invalid,
    Traffic::Disconnect,
    Traffic::Ok,
    Traffic::Timeout,
    Traffic::Ok,
    Traffic::Invalid,
    Traffic::Whole,
    Traffic::Ok,
    Traffic::Disconnect,
    Traffic::Invalid,
    Traffic::Ok,
    Traffic::Timeout,
    Traffic::Ok,
    Traffic::Invalid,
    Traffic::Whole,
    Traffic::Disconnect,
    Traffic::Ok,
    Traffic::Invalid,
    Traffic::Ok,
];

/// The `ok` mock's stream, and how many events a disconnecting client reads.
const OK_TOKENS: usize = 32;
const OK_GAP_MS: f64 = 2.0;
const STALL_AFTER: usize = 4;
const DISCONNECT_AFTER_EVENTS: usize = 6;
/// Sluice's upstream pool closes connections idle longer than this
/// (`provider::pool::IDLE_LIMIT`) when it is next used.
const POOL_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// A stream that takes longer than this is a failure (the longest expected
/// is a tool loop: two model calls and a query).
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// Requests finished per kind: as expected, or not (with the reasons).
#[derive(Default)]
pub(crate) struct Counts {
    done: [AtomicU64; 6],
    unexpected: [AtomicU64; 6],
    reasons: Mutex<BTreeMap<String, u64>>,
}

impl Counts {
    fn record(&self, kind: Traffic, result: Result<(), String>) {
        let i = kind as usize;
        match result {
            Ok(()) => self.done[i].fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                *self
                    .reasons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(format!("{}: {e}", kind.label()))
                    .or_insert(0) += 1;
                self.unexpected[i].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Done per kind (in `TRAFFIC` order) and the unexpected total.
    pub(crate) fn snapshot(&self) -> ([u64; 6], u64) {
        let done = std::array::from_fn(|i| self.done[i].load(Ordering::Relaxed));
        let bad = self
            .unexpected
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum();
        (done, bad)
    }

    pub(crate) fn reasons(&self) -> BTreeMap<String, u64> {
        self.reasons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A keep-alive HTTP/1.1 connection to Sluice; dropping it aborts its
/// driver task, which closes the socket (how a client "leaves").
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
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
    Ok(Conn { sender, driver })
}

/// The request of one kind; `round` picks which invalid one (each client
/// goes through all three over three rounds of the mix).
fn request(kind: Traffic, addr: SocketAddr, round: u64) -> Result<Request<Full<Bytes>>, String> {
    let (pipeline, content_type, body): (_, _, &'static str) = match kind {
        Traffic::Ok | Traffic::Disconnect => ("ok", "application/json", SLUICE_BODY),
        Traffic::Whole => (
            "ok",
            "application/json",
            r#"{"input":"Say something.","stream":false}"#,
        ),
        Traffic::Timeout => ("stall", "application/json", SLUICE_BODY),
        Traffic::Tool => (
            "tools",
            "application/json",
            r#"{"input":"Where is order 1?"}"#,
        ),
        Traffic::Invalid => match round % 3 {
            0 => ("ok", "application/json", r#"{"input": "unterminated"#),
            1 => (
                "ok",
                "application/json",
                r#"{"input":"hi","temperatur":0.5}"#,
            ),
            _ => ("ok", "text/plain", SLUICE_BODY),
        },
    };
    Request::post(format!("/v1/pipelines/{pipeline}"))
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .map_err(|e| format!("request: {e}"))
}

/// Whether `events` (SSE text so far) is what `kind` must produce.
fn check_stream(kind: Traffic, text: &str) -> Result<(), String> {
    let has = |s: &str| text.contains(s);
    let done = has("event: done");
    match kind {
        Traffic::Ok if done && has("event: usage") && !has("event: error") => Ok(()),
        Traffic::Timeout if done && has("timeout.idle") => Ok(()),
        Traffic::Tool
            if done
                && has("event: tool_call")
                && has("event: tool_result")
                && has("event: usage")
                && !has("event: error") =>
        {
            Ok(())
        }
        _ if has("event: error") => {
            let code = text
                .split("\"code\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?");
            Err(format!("error event {code}"))
        }
        _ if !done => Err("stream did not finish".into()),
        _ => Err("stream finished without the expected events".into()),
    }
}

/// One request on `conn` (connected first if needed). A client that leaves
/// (`Disconnect`) drops its connection; so does any failure, so that the
/// next request starts on a fresh one.
async fn one(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    kind: Traffic,
    round: u64,
) -> Result<(), String> {
    if conn.as_ref().is_none_or(|c| c.sender.is_closed()) {
        *conn = Some(connect(addr).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let req = request(kind, addr, round)?;
    c.sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let resp = c
        .sender
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let want = match (kind, round % 3) {
        (Traffic::Invalid, 2) => 415,
        (Traffic::Invalid, _) => 400,
        _ => 200,
    };
    if status != want {
        return Err(format!("status {status}, expected {want}"));
    }
    let mut body = resp.into_body();
    let mut text = Vec::new();
    let mut events = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            events += memchr::memmem::find_iter(&data, b"\n\n").count();
            // Bounded: the longest expected body is a few kilobytes.
            if text.len() < 64 * 1024 {
                text.extend_from_slice(&data);
            }
        }
        if kind == Traffic::Disconnect && events >= DISCONNECT_AFTER_EVENTS {
            // Leave mid-stream: closing the socket is all a client does.
            *conn = None;
            return Ok(());
        }
    }
    let text = String::from_utf8_lossy(&text);
    match kind {
        Traffic::Invalid => Ok(()),
        Traffic::Whole if text.contains("\"usage\"") => Ok(()),
        Traffic::Whole => Err("the JSON answer has no usage".into()),
        Traffic::Disconnect => Err(format!("the stream ended after {events} events")),
        _ => check_stream(kind, &text),
    }
}

/// A client of the mix (or of the tool lane) until `stop`.
async fn client(
    addr: SocketAddr,
    lane: &'static [Traffic],
    start: usize,
    pause: Duration,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
) {
    let mut conn: Option<Conn> = None;
    let mut n = start as u64;
    while !stop.load(Ordering::Relaxed) {
        let kind = lane[n as usize % lane.len()];
        let result = match tokio::time::timeout(
            REQUEST_DEADLINE,
            one(&mut conn, addr, kind, n / MIX.len() as u64),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err("no answer within 30 s".into()),
        };
        if result.is_err() {
            conn = None;
        }
        counts.record(kind, result);
        n += 1;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The pipelines directory: three providers (one per mock), the shop
/// database (seeded from `fixtures/shop/seed.sql` by Sluice itself), the
/// SQLite ledger, and the `ok`, `stall` and `tools` pipelines.
fn write_pipelines(
    dir: &Path,
    ok: SocketAddr,
    stall: SocketAddr,
    tools: SocketAddr,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/shop/seed.sql");
    let settings = format!(
        "# Written by the sluice-benches load generator (soak).\n\
         server:\n  listen: 127.0.0.1:0\n  keepalive: 15s\n  shutdown_grace: 1s\n\
         providers:\n\
         \x20 ok: {{kind: openai, base_url: 'http://{ok}/v1'}}\n\
         \x20 stall: {{kind: openai, base_url: 'http://{stall}/v1'}}\n\
         \x20 tools: {{kind: openai, base_url: 'http://{tools}/v1'}}\n\
         storage: 'sqlite:{ledger}'\n\
         prices:\n  bench-model: {{input: 0.15, output: 0.60}}\n\
         databases:\n  shop: {{path: '{shop}', seed: '{seed}'}}\n",
        ledger = dir.join("data/ledger.db").display(),
        shop = dir.join("shop.db").display(),
        seed = seed.display(),
    );
    std::fs::write(dir.join("settings.yaml"), settings)?;
    let budget = "budget: {daily_usd: 1000000}\n";
    std::fs::write(
        dir.join("ok.yaml"),
        format!(
            "name: ok\nmodel: {{provider: ok, name: bench-model}}\n\
             limits: {{max_tokens: 1024}}\n\
             timeouts: {{connect: 5s, first_token: 10s, idle: 10s, total: 60s}}\n{budget}"
        ),
    )?;
    // Short deadlines: the mock goes silent after a few events and Sluice
    // must give up after 200 ms, close the upstream and settle the row.
    std::fs::write(
        dir.join("stall.yaml"),
        format!(
            "name: stall\nmodel: {{provider: stall, name: bench-model}}\n\
             limits: {{max_tokens: 1024}}\n\
             timeouts: {{connect: 5s, first_token: 2s, idle: 200ms, total: 20s}}\n{budget}"
        ),
    )?;
    std::fs::write(
        dir.join("tools.yaml"),
        format!(
            "name: tools\nmodel: {{provider: tools, name: bench-model}}\n\
             system: Use lookup_order to read an order before answering.\n\
             limits: {{max_tokens: 256, max_tool_rounds: 2, max_total_tokens: 8000}}\n\
             timeouts: {{connect: 5s, first_token: 10s, idle: 10s, total: 60s}}\n{budget}\
             tools:\n\
             \x20 - name: lookup_order\n\
             \x20   description: Look up one order by its id\n\
             \x20   parameters:\n\
             \x20     type: object\n\
             \x20     properties: {{order_id: {{type: integer, minimum: 1}}}}\n\
             \x20     required: [order_id]\n\
             \x20     additionalProperties: false\n\
             \x20   sql:\n\
             \x20     database: shop\n\
             \x20     query: SELECT id, status, total_cents, created_at FROM orders WHERE id = :order_id\n\
             \x20     max_rows: 20\n\
             \x20     timeout: 1s\n"
        ),
    )?;
    Ok(())
}

/// How often to sample: every 10 s, more often in short runs (at least ~60
/// samples), never below 1 s.
fn sample_every(duration: Duration) -> Duration {
    (duration / 60).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Runs the soak for `opts.duration` with `opts.concurrency` mixed clients
/// (64 unless set) plus the tool lane.
pub(crate) async fn run_soak(bins: &Bins, opts: &Opts) -> Result<Soak, String> {
    let duration = opts.duration;
    let clients = opts.concurrency.unwrap_or(64);
    let tmp = TempDir::new("soak", opts.keep_temp).map_err(|e| format!("temp dir: {e}"))?;
    let spec = |stall_after, tool_calls| MockSpec {
        tokens: OK_TOKENS,
        gap_ms: OK_GAP_MS,
        usage: true,
        stall_after,
        tool_calls,
    };
    let ok = Mock::start(
        &bins.sluice,
        &spec(None, false),
        tmp.path.join("mock-ok.log"),
    )?;
    let stall = Mock::start(
        &bins.sluice,
        &spec(Some(STALL_AFTER), false),
        tmp.path.join("mock-stall.log"),
    )?;
    let tools = Mock::start(
        &bins.sluice,
        &spec(None, true),
        tmp.path.join("mock-tools.log"),
    )?;
    let dir = tmp.path.join("pipelines");
    write_pipelines(&dir, ok.addr, stall.addr, tools.addr)
        .map_err(|e| format!("pipelines: {e}"))?;
    let port = procs::free_port().map_err(|e| format!("free port: {e}"))?;
    let mut sluice = procs::start_sluice(
        &bins.sluice,
        &dir,
        port,
        tmp.path.join("sluice.log"),
        &opts.sluice_log,
        &opts.sluice_env,
        &opts.sluice_wrap,
    )?;
    wait_ready(&mut sluice, port).await?;
    let mocks = [ok.proc.pid(), stall.proc.pid(), tools.proc.pid()];
    let ledger = dir.join("data/ledger.db");
    eprintln!(
        "soak: {} s, {clients} mixed clients + 1 tool lane, pause {} ms; sluice pid {} on 127.0.0.1:{port}, \
         mock pids {:?}, files in {}",
        duration.as_secs(),
        opts.pause.as_millis(),
        sluice.pid(),
        mocks,
        tmp.path.display()
    );
    let counts = Arc::new(Counts::default());
    let t0 = tokio::time::Instant::now();
    let sluice_pid = sluice.pid();
    let take = |counts: &Counts| sample(t0.elapsed(), counts, sluice_pid, &mocks, &ledger);
    // The idle level, before any traffic: what the descriptors must come
    // back to once the traffic is over.
    let before = take(&counts);

    let stop = Arc::new(AtomicBool::new(false));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(tokio::spawn(client(
            addr,
            &MIX,
            i,
            opts.pause,
            counts.clone(),
            stop.clone(),
        )));
    }
    const TOOL_LANE: [Traffic; 1] = [Traffic::Tool];
    tasks.push(tokio::spawn(client(
        addr,
        &TOOL_LANE,
        0,
        opts.pause,
        counts.clone(),
        stop.clone(),
    )));

    let every = sample_every(duration);
    let mut samples: Vec<Sample> = Vec::new();
    let mut next = t0 + every;
    while next <= t0 + duration {
        tokio::time::sleep_until(next).await;
        if let Some(status) = sluice.exited() {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "sluice exited ({status}) during the soak; its log:\n{}",
                sluice.log_tail(30)
            ));
        }
        let s = take(&counts);
        eprintln!("  {}", s.line());
        samples.push(s);
        next += every;
    }
    stop.store(true, Ordering::Relaxed);
    // Each client finishes the request it is in (bounded by its deadline)
    // and drops its connection.
    for t in tasks {
        let _ = t.await;
    }
    // Drained: no request in flight, no client connection. Sluice keeps
    // the upstream connections of the last burst pooled (idle ones are
    // only reaped when a call checks the pool: provider/pool.rs), so wait
    // past the pool's 30 s idle limit, then make one call per pipeline,
    // which closes the expired ones; what stays open beyond the idle level
    // then is a leak.
    let drain_start = tokio::time::Instant::now();
    tokio::time::sleep(POOL_IDLE_LIMIT + Duration::from_secs(5)).await;
    let mut conn = None;
    for (i, kind) in [Traffic::Ok, Traffic::Timeout, Traffic::Tool]
        .into_iter()
        .enumerate()
    {
        let r = one(&mut conn, addr, kind, i as u64).await;
        counts.record(kind, r);
    }
    drop(conn);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = take(&counts);
    let drained_in = drain_start.elapsed();
    let metrics = requests_by_status(port).await;
    drop(sluice);
    drop((ok, stall, tools));
    Ok(Soak {
        duration,
        clients,
        pause: opts.pause,
        before,
        samples,
        after,
        drained_in,
        reasons: counts.reasons(),
        sluice_metrics: metrics,
    })
}
