//! The scenario's client: one HTTP/1.1 request to the server under test,
//! the response read as any SSE client would, each event named as its API
//! names it ([`Api::event_name`]: Sluice's and Anthropic's named events,
//! Chat Completions' chunks by what they carry) and stamped with the
//! (virtual) time it arrived. The client can leave early.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::api::Api;
use super::build::ClientPlan;
use crate::provider::sse::SseParser;

/// Reading stops after this many events: a stream that does not end.
const MAX_EVENTS: usize = 200_000;

/// One SSE event as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenEvent {
    /// Its name for the expectations ([`Api::event_name`]).
    pub name: String,
    /// Its data: JSON, or the text when it is not (`[DONE]`).
    pub data: Value,
    /// Since the request was sent.
    pub at: Duration,
}

/// What the client saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    /// A JSON body (non-stream responses).
    pub body: Option<Value>,
    pub events: Vec<SeenEvent>,
    pub keepalives: usize,
    /// When the client left early (since the request was sent).
    pub disconnected_at: Option<Duration>,
    /// A problem reading the response (not an expectation failure).
    pub problem: Option<String>,
    /// When the response ended or the client left (since the request was sent).
    pub ended_at: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `body` to `api`'s `path` on `addr` and reads the answer. `t0` is
/// when the request counts as sent; `wall_limit` bounds the real time spent
/// reading (an endless stream on a paused clock never times out).
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    addr: SocketAddr,
    api: Api,
    path: &str,
    body: &Value,
    plan: &ClientPlan,
    t0: Instant,
    wall_limit: Duration,
) -> Response {
    let mut out = Response::default();
    let leave_at = plan.disconnect_after.map(|d| t0 + d);
    // A watchdog on the real clock: an upstream that never stops writing
    // keeps the runtime busy, so virtual time never reaches any deadline,
    // and a server that relays none of it sends the client nothing to
    // count. The thread only ever ends a run that is stuck; it wakes the
    // runtime through a channel and exits as soon as `done` is dropped.
    let (expired_tx, expired) = tokio::sync::oneshot::channel::<()>();
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(wall_limit) {
            let _ = expired_tx.send(());
        }
    });
    let stuck = {
        let read = read(addr, api, path, body, plan, t0, wall_limit, &mut out);
        let read = async {
            match leave_at {
                Some(at) => tokio::time::timeout_at(at, read).await.err().map(|_| at),
                None => {
                    read.await;
                    None
                }
            }
        };
        tokio::select! {
            left = read => {
                if let Some(at) = left {
                    out.disconnected_at = Some(at.duration_since(t0));
                }
                false
            }
            _ = expired => true,
        }
    };
    drop(done);
    let _ = watchdog.join();
    if stuck {
        out.problem = Some(format!(
            "the exchange did not end within {} of real time (after {} events)",
            humantime::format_duration(wall_limit),
            out.events.len()
        ));
    }
    out.ended_at = Instant::now().duration_since(t0);
    out
}

#[allow(clippy::too_many_arguments)]
async fn read(
    addr: SocketAddr,
    api: Api,
    path: &str,
    body: &Value,
    plan: &ClientPlan,
    t0: Instant,
    wall_limit: Duration,
    out: &mut Response,
) {
    let wall_start = std::time::Instant::now();
    let tcp = match TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => {
            out.problem = Some(format!("cannot connect to the server: {e}"));
            return;
        }
    };
    // Written at once, as the server and the mock do: a request held back
    // by Nagle's algorithm would wait for an ACK in real time.
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok(v) => v,
        Err(e) => {
            out.problem = Some(format!("http handshake failed: {e}"));
            return;
        }
    };
    // Aborted (closing the socket) when this future is dropped or returns.
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut req = Request::post(path)
        .header("host", "sluice.scenario")
        .header("content-type", "application/json")
        .header("x-request-id", super::runner::REQUEST_ID);
    for (k, v) in &plan.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = match req.body(Full::new(Bytes::from(body.to_string()))) {
        Ok(r) => r,
        Err(e) => {
            out.problem = Some(format!("cannot build the request: {e}"));
            return;
        }
    };
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            out.problem = Some(format!("no response: {e}"));
            return;
        }
    };
    out.status = resp.status().as_u16();
    out.headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let is_sse = out
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream"));
    let mut body = resp.into_body();
    if !is_sse {
        match body.collect().await {
            Ok(c) => {
                let bytes = c.to_bytes();
                out.body = Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&bytes).into_owned())
                }));
            }
            Err(e) => out.problem = Some(format!("cannot read the response body: {e}")),
        }
        return;
    }
    let mut parser = SseParser::new();
    let mut parsed = Vec::new();
    loop {
        if wall_start.elapsed() > wall_limit {
            out.problem = Some(format!(
                "the stream did not end within {} of real time (after {} events)",
                humantime::format_duration(wall_limit),
                out.events.len()
            ));
            return;
        }
        let frame = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                out.problem = Some(format!("the response body failed: {e}"));
                break;
            }
            Some(Ok(f)) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let at = Instant::now().duration_since(t0);
        out.keepalives += count(&data, b": keep-alive");
        if let Err(e) = parser.push(&data, &mut parsed) {
            out.problem = Some(format!("the server sent invalid SSE: {e}"));
            return;
        }
        for ev in parsed.drain(..) {
            let data = serde_json::from_str(&ev.data).unwrap_or(Value::String(ev.data));
            out.events.push(SeenEvent {
                name: api.event_name(ev.event, &data),
                data,
                at,
            });
            if plan
                .disconnect_after_events
                .is_some_and(|n| out.events.len() >= n)
            {
                out.disconnected_at = Some(at);
                drop(conn);
                return;
            }
        }
        if out.events.len() > MAX_EVENTS {
            out.problem = Some(format!("the stream did not end after {MAX_EVENTS} events"));
            return;
        }
    }
    parser.finish(&mut parsed);
    if !parsed.is_empty() {
        out.problem = Some("the stream ended inside an event".into());
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
