//! The `cancel` workload: how fast Sluice closes its upstream after an idle
//! deadline or a client disconnect, read from the mock's journal.

use sluice::bench::workload::{Lengths, Load, PromptSource, Stop};
use sluice::bench::{self, Plan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// The `cancel` workload's result.
pub(crate) struct Cancel {
    pub(crate) deadline: Close,
    pub(crate) disconnect: Close,
    pub(crate) idle_ms: f64,
}

/// How fast Sluice closes its upstream connection (as the mock sees it):
/// after an idle deadline (the mock goes silent after 10 events; the
/// pipeline's `idle` is 100 ms), and after its client disconnects while the
/// upstream is silent.
pub(crate) async fn run_cancel(bins: &Bins, opts: &Opts) -> Result<Cancel, String> {
    const STALL_AFTER: usize = 10;
    const IDLE_MS: f64 = 100.0;
    let n_deadline = opts.requests.unwrap_or(200);
    let n_disconnect = opts.requests.unwrap_or(200);
    let tmp = TempDir::new("cancel", opts.keep_temp).map_err(|e| format!("temp dir: {e}"))?;
    let mock_spec = MockSpec {
        tokens: opts.tokens.max(STALL_AFTER),
        gap_ms: 0.0,
        usage: true,
        stall_after: Some(STALL_AFTER),
        tool_calls: false,
    };
    let pipelines = [
        PipelineSpec {
            name: "deadline",
            first_token: "5s",
            idle: "100ms",
            total: "60s",
        },
        PipelineSpec {
            name: "disconnect",
            first_token: "60s",
            idle: "60s",
            total: "300s",
        },
    ];
    let (mut mock, sluice, port) = start_stack(bins, &tmp, &mock_spec, &pipelines, opts).await?;
    eprintln!(
        "cancel: mock pid {} on {}, sluice pid {} on 127.0.0.1:{port}",
        mock.proc.pid(),
        mock.addr,
        sluice.pid()
    );

    // 1. Idle deadline: every stream ends with `error: timeout.idle`.
    eprintln!("  deadline: {n_deadline} requests, 10 clients, idle 100 ms");
    let plan = Plan {
        steps: vec![Load::Closed { concurrency: 10 }],
        stop: Stop {
            requests: Some(n_deadline as u64),
            duration: None,
        },
        prompts: PromptSource::Synthetic {
            prompt_tokens: Lengths::Fixed(8),
        },
        output_tokens: Lengths::Fixed(64),
        ..Plan::default()
    };
    let url = format!("http://127.0.0.1:{port}/v1/pipelines/deadline");
    let steps = bench::run(target(url, None, 10, false, opts)?, &plan, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let journal = mock.journal()?;
    let mut deadline = Close::default();
    // The streams are expected to end with an error event.
    for s in &steps {
        for (cause, n) in &s.failures {
            if cause != "stream_error" {
                deadline.failed.push(format!("{cause}: {n}"));
            }
        }
        if s.ok > 0 {
            deadline
                .failed
                .push(format!("{} streams ended without the deadline", s.ok));
        }
    }
    for e in &journal {
        let last = e["last_event_at_ns"].as_u64();
        let closed = e["client_closed_at_ns"].as_u64();
        match (last, closed) {
            (Some(l), Some(c)) => {
                deadline
                    .samples_ms
                    .push((c as f64 - l as f64) / 1e6 - IDLE_MS);
            }
            _ => deadline.not_closed += 1,
        }
    }
    let base = journal.len();

    // 2. Client disconnect while the upstream is silent, one at a time so
    //    the mock's journal order is the clients' order.
    eprintln!("  disconnect: {n_disconnect} requests, one at a time");
    let addr = ([127, 0, 0, 1], port).into();
    let mut closes = Vec::new();
    let mut disconnect = Close::default();
    let until = tokio::time::Instant::now() + opts.deadline;
    for _ in 0..n_disconnect {
        if tokio::time::Instant::now() > until {
            disconnect.failed.push("deadline".into());
            break;
        }
        // Sluice sends `start` and one delta per upstream content chunk:
        // 10 upstream events (role + 9 contents) make 10 client events.
        match read_then_close(
            addr,
            "/v1/pipelines/disconnect",
            SLUICE_BODY.as_bytes(),
            STALL_AFTER as u32,
            Duration::from_millis(20),
        )
        .await
        {
            Ok(at) => closes.push(Some(at)),
            Err(e) => {
                disconnect.failed.push(e);
                closes.push(None);
            }
        }
        // Let the close reach the mock before the next request arrives.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let journal = mock.journal()?;
    for (j, at) in closes.iter().enumerate() {
        let Some(at) = at else { continue };
        match journal
            .get(base + j)
            .and_then(|e| e["client_closed_at_ns"].as_u64())
        {
            Some(c) => disconnect.samples_ms.push((c as f64 - *at as f64) / 1e6),
            None => disconnect.not_closed += 1,
        }
    }
    if journal.len() != base + closes.len() {
        disconnect.failed.push(format!(
            "the mock saw {} requests, expected {}",
            journal.len() - base,
            closes.len()
        ));
    }
    drop(sluice);
    drop(mock);
    Ok(Cancel {
        deadline,
        disconnect,
        idle_ms: IDLE_MS,
    })
}

/// A request over a raw socket that reads `events` SSE events, waits
/// `linger`, then closes the socket. Returns the CLOCK_MONOTONIC time of
/// the close (ns). For measuring how fast Sluice closes its upstream after
/// its client leaves.
async fn read_then_close(
    addr: std::net::SocketAddr,
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
    let at = procs::monotonic_ns();
    drop(tcp);
    Ok(at)
}
