//! The `cancel` workload: how fast Sluice closes its upstream after an idle
//! deadline or a client disconnect, read from the mock's journal.

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
        requests: n_deadline,
        concurrency: 10,
        connect_ramp: Duration::ZERO,
        request_ramp: Duration::ZERO,
        deadline: opts.deadline,
        reconnect: false,
        http2: false,
    };
    let outcome = client::run(sluice_target(port, "deadline", 0), plan).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let journal = mock.journal()?;
    let mut deadline = Close::default();
    // The streams are expected to end with an error event.
    for (kind, n) in &outcome.errors {
        if kind != "error event" {
            deadline.failed.push(format!("{kind}: {n}"));
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
        match client::read_then_close(
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
