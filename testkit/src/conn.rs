//! One client connection: read requests, answer them from the script while
//! watching for the client closing, keep-alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::fixture::Wire;
use crate::http::{self, ReadError, Request};
use crate::journal::{Journal, RecordedRequest};
use crate::script::{Body, Fault, Reply};
use crate::{anthropic, hostile, sse};

pub(crate) struct Shared {
    pub responder: Arc<dyn crate::Responder>,
    pub journal: Journal,
    pub next_slot: AtomicUsize,
    pub read_by_peer: Option<crate::ReadByPeer>,
}

/// How a reply ended.
enum Outcome {
    Completed,
    /// The client went away (EOF, reset or write error) at this time.
    ClientClosed(Instant),
    /// `Fault::DisconnectAfter`: the mock closes the connection.
    Disconnect {
        reset: bool,
    },
}

enum Plan {
    /// A complete JSON response (errors, 404, 400).
    Simple(u16, Vec<u8>),
    Stream(Reply, Wire),
    Json(Reply, Wire),
}

// The API a request was made to (`fixture::Wire`), chosen by its path. It
// shapes error bodies and non-streaming answers; scripted stream bodies are
// sent as they are, whatever the path.

impl Wire {
    fn error_body(self, status: u16, message: Option<&str>) -> Vec<u8> {
        match self {
            Wire::OpenAi => http::error_body(status, message),
            Wire::Anthropic => anthropic::error_body(status, message),
        }
    }

    /// The in-stream error event of `Fault::ErrorEventAfter`.
    fn error_event(self) -> Bytes {
        match self {
            Wire::OpenAi => Bytes::from_static(sse::ERROR_EVENT),
            Wire::Anthropic => Bytes::from_static(anthropic::ERROR_EVENT),
        }
    }
}

pub(crate) async fn serve(mut stream: TcpStream, shared: Arc<Shared>, conn: usize) {
    let _ = stream.set_nodelay(true);
    let addrs = stream.local_addr().ok().zip(stream.peer_addr().ok());
    let journal = shared.journal.clone();
    let mut buf = BytesMut::new();
    let mut mine: Vec<usize> = Vec::new();
    // `Fault::CloseIdleAfter` of the last reply: how long the connection
    // may wait for the next request.
    let mut idle_limit: Option<Duration> = None;
    loop {
        if let Some(limit) = idle_limit.take()
            && buf.is_empty()
        {
            buf.reserve(4096);
            // Waits for the first byte of the next request (or an EOF, which
            // `read_request` then sees again).
            let first = tokio::time::timeout(limit, stream.read_buf(&mut buf)).await;
            if first.is_err() {
                let _ = stream.shutdown().await;
                journal.connection_done(&mine, None);
                return;
            }
        }
        let req = match http::read_request(&mut stream, &mut buf).await {
            Ok(req) => req,
            Err(ReadError::Closed) => {
                journal.connection_done(&mine, Some(Instant::now()));
                return;
            }
            Err(ReadError::Bad(status, msg)) => {
                let body = http::error_body(status, Some(&msg));
                let extra = [("connection", "close".to_owned())];
                let resp = http::full_response(status, &extra, "application/json", &body);
                let _ = stream.write_all(&resp).await;
                let _ = stream.shutdown().await;
                journal.connection_done(&mine, None);
                return;
            }
        };
        let received_at = Instant::now();
        let json: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let (plan, slot) = plan(&req, &json, &shared);
        let faults = match &plan {
            Plan::Stream(r, _) | Plan::Json(r, _) => r.faults.as_slice(),
            Plan::Simple(..) => &[],
        };
        let keep_alive = req.keep_alive() && !faults.contains(&Fault::ConnectionClose);
        let key = match &plan {
            Plan::Stream(_, w) | Plan::Json(_, w) => req.header(hostile::key_header(*w)),
            Plan::Simple(..) => None,
        }
        .unwrap_or("(none)")
        .to_owned();
        let drip = faults
            .iter()
            .find_map(|f| match f {
                Fault::SlowDrip { head, body } => Some((*head, *body)),
                _ => None,
            })
            .unwrap_or_default();
        idle_limit = faults.iter().find_map(|f| match f {
            Fault::CloseIdleAfter(d) => Some(*d),
            _ => None,
        });
        let idx = journal.push(RecordedRequest {
            method: req.method,
            path: req.path,
            headers: req.headers,
            body: json,
            raw_body: req.body,
            received_at,
            events_sent: 0,
            bytes_sent: 0,
            headers_sent_at: None,
            last_event_at: None,
            client_closed_at: None,
            completed_at: None,
            connection_closed_at: None,
            connection: conn,
            slot,
        });
        mine.push(idx);

        let outcome = {
            let (mut rd, mut wr) = stream.split();
            let mut out = Out {
                wr: &mut wr,
                journal: &journal,
                idx,
                keep_alive,
                key,
                drip,
                in_body: false,
                frame: Vec::new(),
                pacing: shared.read_by_peer.clone().zip(addrs),
            };
            tokio::select! {
                biased;
                () = watch_close(&mut rd, &mut buf) => Outcome::ClientClosed(Instant::now()),
                res = out.reply(plan) => res.unwrap_or_else(Outcome::ClientClosed),
            }
        };
        match outcome {
            Outcome::Completed if keep_alive => continue,
            Outcome::Completed => {
                let _ = stream.shutdown().await;
                journal.connection_done(&mine, None);
            }
            Outcome::ClientClosed(at) => journal.connection_done(&mine, Some(at)),
            Outcome::Disconnect { reset } => {
                if reset {
                    // SO_LINGER 0: dropping the socket sends RST.
                    let _ = stream.set_zero_linger();
                } else {
                    let _ = stream.shutdown().await;
                }
                journal.connection_done(&mine, None);
            }
        }
        return;
    }
}

/// Decides the answer to `req`; the slot is taken only for model requests.
fn plan(req: &Request, json: &Value, shared: &Shared) -> (Plan, Option<usize>) {
    let route = req.path.split('?').next().unwrap_or("");
    let wire = if route.ends_with("/chat/completions") {
        Wire::OpenAi
    } else if route.ends_with("/messages") {
        Wire::Anthropic
    } else {
        if let Some((status, body)) = shared.responder.route(&req.method, route) {
            return (Plan::Simple(status, body), None);
        }
        let msg = format!("Unknown request URL: {} {}", req.method, req.path);
        return (Plan::Simple(404, http::error_body(404, Some(&msg))), None);
    };
    if req.method != "POST" {
        let msg = format!("Unknown request URL: {} {}", req.method, req.path);
        return (Plan::Simple(404, wire.error_body(404, Some(&msg))), None);
    }
    if !json.is_object() {
        let msg = "We could not parse the JSON body of your request.";
        return (Plan::Simple(400, wire.error_body(400, Some(msg))), None);
    }
    let slot = shared.next_slot.fetch_add(1, Ordering::Relaxed);
    let model_request = crate::ModelRequest {
        wire,
        body: json,
        body_len: req.body.len(),
        index: slot,
    };
    let reply = match shared.responder.reply(&model_request) {
        Ok(reply) => reply,
        Err((status, msg)) => {
            return (
                Plan::Simple(status, wire.error_body(status, Some(&msg))),
                Some(slot),
            );
        }
    };
    // Both APIs stream only when asked (`stream` defaults to false there);
    // the mock streams unless told not to.
    let plan = if json.get("stream") == Some(&Value::Bool(false)) {
        Plan::Json(reply, wire)
    } else {
        Plan::Stream(reply, wire)
    };
    (plan, Some(slot))
}

/// Returns when the client closes its side (EOF) or the connection fails.
/// Bytes that arrive meanwhile (a pipelined request) are kept in `buf`.
async fn watch_close(rd: &mut ReadHalf<'_>, buf: &mut BytesMut) {
    loop {
        buf.reserve(4096);
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The events of a reply with the delay before each, produced lazily (a
/// flood never ends).
enum Source {
    Events(std::vec::IntoIter<(Bytes, Duration)>),
    /// The prelude's events, then `content` forever; `next` indexes the
    /// reply's timing.
    Flood {
        prelude: std::vec::IntoIter<Bytes>,
        content: Bytes,
        reply: Reply,
        next: usize,
    },
    /// Events made by a hostile fault (see `hostile`), at the reply's pace.
    Lazy {
        events: hostile::Events,
        reply: Reply,
        next: usize,
    },
}

impl Iterator for Source {
    type Item = (Bytes, Duration);
    fn next(&mut self) -> Option<(Bytes, Duration)> {
        match self {
            Source::Events(it) => it.next(),
            Source::Flood {
                prelude,
                content,
                reply,
                next,
            } => {
                let delay = reply.event_delay(*next);
                *next += 1;
                Some((prelude.next().unwrap_or_else(|| content.clone()), delay))
            }
            Source::Lazy {
                events,
                reply,
                next,
            } => {
                let event = events.next()?;
                let delay = reply.event_delay(*next);
                *next += 1;
                Some((event, delay))
            }
        }
    }
}

/// The reply's events after `Truncate`/`OmitUsage`, each with its delay. A
/// removed event's recorded delay is added to the next one sent, so the
/// rest of the stream keeps its recorded times; a uniform pace is only
/// paid by the events sent.
fn timed_events(events: &[Bytes], reply: &Reply) -> Vec<(Bytes, Duration)> {
    let truncate = reply.faults.contains(&Fault::Truncate);
    let omit_usage = reply.faults.contains(&Fault::OmitUsage);
    if !truncate && !omit_usage {
        // The common case, on every request of a busy mock: no event is
        // parsed, each is shared (a reference count), not copied.
        return events
            .iter()
            .enumerate()
            .map(|(i, ev)| (ev.clone(), reply.event_delay(i)))
            .collect();
    }
    let recorded = reply.timing.as_ref().map_or(0, |t| t.events.len());
    let mut out = Vec::with_capacity(events.len());
    let mut carried = Duration::ZERO;
    for (i, ev) in events.iter().enumerate() {
        let delay = reply.event_delay(i);
        let kept = sse::transform(std::slice::from_ref(ev), truncate, omit_usage);
        if kept.is_empty() && i < recorded {
            carried += delay;
        }
        for k in kept {
            out.push((k, std::mem::take(&mut carried) + delay));
        }
    }
    out
}

fn transformed(events: &[Bytes], faults: &[Fault]) -> Vec<Bytes> {
    let truncate = faults.contains(&Fault::Truncate);
    let omit_usage = faults.contains(&Fault::OmitUsage);
    sse::transform(events, truncate, omit_usage)
}

/// The writing side of one reply. `Err(t)`: a write failed at `t`.
struct Out<'a, 'b> {
    wr: &'a mut WriteHalf<'b>,
    journal: &'a Journal,
    idx: usize,
    keep_alive: bool,
    /// The request's API key header as sent, for the key-echo faults.
    key: String,
    /// `Fault::SlowDrip`: the interval between bytes of the head and of
    /// the body (zero: all at once).
    drip: (Duration, Duration),
    /// The head has been written.
    in_body: bool,
    /// Reused by `chunk` for each event's framed bytes.
    frame: Vec<u8>,
    /// `MockProvider::start_paced`: whether the client has read all that
    /// was written on this connection (local and peer address).
    pacing: Option<(
        crate::ReadByPeer,
        (std::net::SocketAddr, std::net::SocketAddr),
    )>,
}

impl Out<'_, '_> {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Instant> {
        let interval = if self.in_body {
            self.drip.1
        } else {
            self.drip.0
        };
        if interval.is_zero() {
            self.wr.write_all(bytes).await.map_err(|_| Instant::now())?;
            return self.wr.flush().await.map_err(|_| Instant::now());
        }
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            self.wr
                .write_all(std::slice::from_ref(b))
                .await
                .map_err(|_| Instant::now())?;
            self.wr.flush().await.map_err(|_| Instant::now())?;
        }
        Ok(())
    }

    /// Writes `payload` as one HTTP chunk, in one write: the framing and
    /// the payload are put together in a buffer kept for the whole reply.
    async fn chunk(&mut self, payload: &[u8]) -> Result<(), Instant> {
        use std::io::Write;
        let mut framed = std::mem::take(&mut self.frame);
        framed.clear();
        let _ = write!(framed, "{:x}\r\n", payload.len());
        framed.extend_from_slice(payload);
        framed.extend_from_slice(b"\r\n");
        let sent = self.send(&framed).await;
        self.frame = framed;
        sent?;
        let n = payload.len();
        self.journal.update(self.idx, |r| r.bytes_sent += n);
        Ok(())
    }

    /// With pacing, waits until the client has read everything written so
    /// far (bounded by [`crate::PACING_LIMIT`] of real time), yielding to
    /// the runtime meanwhile, so that a flood cannot run ahead of its
    /// reader by whatever the kernel would buffer.
    async fn wait_read(&self) {
        let Some((read, (local, peer))) = &self.pacing else {
            return;
        };
        let started = std::time::Instant::now();
        let mut rounds = 0u32;
        while !read(*local, *peer) && started.elapsed() < crate::PACING_LIMIT {
            // Let the reader's task run; past a few rounds, let the thread
            // go too (the kernel may need this core to deliver the bytes).
            if rounds >= 16 {
                std::thread::yield_now();
            }
            rounds += 1;
            tokio::task::yield_now().await;
        }
    }

    fn completed(&self) {
        let now = Instant::now();
        self.journal
            .update(self.idx, |r| r.completed_at = Some(now));
    }

    fn extra_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("x-request-id", format!("req_mock_{}", self.idx))];
        if !self.keep_alive {
            h.push(("connection", "close".to_owned()));
        }
        h
    }

    async fn simple(
        &mut self,
        status: u16,
        extra: &[(&str, String)],
        ctype: &str,
        body: &[u8],
    ) -> Result<Outcome, Instant> {
        let mut headers = self.extra_headers();
        headers.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let resp = http::full_response(status, &headers, ctype, body);
        let (head, rest) = resp.split_at(resp.len() - body.len());
        self.send(head).await?;
        self.in_body = true;
        self.send(rest).await?;
        let n = body.len();
        self.journal.update(self.idx, |r| r.bytes_sent += n);
        self.completed();
        Ok(Outcome::Completed)
    }

    async fn reply(&mut self, plan: Plan) -> Result<Outcome, Instant> {
        let reply = match plan {
            Plan::Simple(status, body) => {
                return self.simple(status, &[], "application/json", &body).await;
            }
            Plan::Stream(ref r, _) | Plan::Json(ref r, _) => r,
        };
        let mut delay = reply.headers_delay();
        for f in &reply.faults {
            if let Fault::DelayHeaders(d) = f {
                delay += *d;
            }
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let status = reply.faults.iter().find_map(|f| match f {
            Fault::Status {
                status,
                retry_after,
            } => Some((*status, *retry_after)),
            _ => None,
        });
        let wire = match plan {
            Plan::Stream(_, w) | Plan::Json(_, w) => w,
            Plan::Simple(..) => Wire::OpenAi,
        };
        let echo = reply.faults.iter().find_map(|f| match f {
            Fault::EchoKeyStatus(status) => Some(*status),
            _ => None,
        });
        if let Some(status) = echo {
            let body = hostile::key_echo_body(wire, status, &self.key);
            return self.simple(status, &[], "application/json", &body).await;
        }
        if let Some((status, retry_after)) = status {
            let extra: Vec<_> = retry_after
                .map(|s| ("retry-after", s.to_string()))
                .into_iter()
                .collect();
            return self
                .simple(
                    status,
                    &extra,
                    "application/json",
                    &wire.error_body(status, None),
                )
                .await;
        }
        match plan {
            Plan::Json(ref r, wire) => self.json(r, wire).await,
            Plan::Stream(ref r, wire) => self.stream(r, wire).await,
            Plan::Simple(..) => Ok(Outcome::Completed),
        }
    }

    /// A non-streaming `chat.completion` or Anthropic `message`. A flood
    /// never finishes, so it never answers (until the client closes).
    async fn json(&mut self, reply: &Reply, wire: Wire) -> Result<Outcome, Instant> {
        let Body::Events(events) = &reply.body else {
            return std::future::pending().await;
        };
        let events = transformed(events, &reply.faults);
        let v = match wire {
            Wire::OpenAi => sse::completion_from_events(&events),
            Wire::Anthropic => anthropic::message_from_events(&events),
        };
        self.simple(200, &[], "application/json", v.to_string().as_bytes())
            .await
    }

    async fn stream(&mut self, reply: &Reply, wire: Wire) -> Result<Outcome, Instant> {
        let faults = &reply.faults;
        let mut head = String::from(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
             transfer-encoding: chunked\r\ncache-control: no-cache\r\n",
        );
        for (k, v) in self.extra_headers() {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes()).await?;
        self.in_body = true;
        let now = Instant::now();
        self.journal
            .update(self.idx, |r| r.headers_sent_at = Some(now));

        // A generated body (huge, endless, or many events) yields between
        // events like a flood, whether or not it ends: written without a
        // pause it would fill the socket's buffers as fast as the kernel
        // takes them, and how many events went out before Sluice cut the
        // stream would depend on that buffering rather than on Sluice.
        let lazy = |(events, _endless): (hostile::Events, bool)| {
            let source = Source::Lazy {
                events,
                reply: reply.clone(),
                next: 0,
            };
            (source, true)
        };
        let usage = faults.iter().find_map(|f| match f {
            Fault::AbsurdUsage { prompt, completion } => Some((*prompt, *completion)),
            _ => None,
        });
        let echo_model = faults.contains(&Fault::EchoKeyModel);
        let replaced = hostile::replacement(faults, wire);
        let (mut source, flood) = match &reply.body {
            _ if replaced.is_some() => lazy(replaced.unwrap_or_else(|| unreachable!())),
            Body::Events(ev) if hostile::rewrites(faults) => {
                lazy(hostile::rewritten(transformed(ev, faults), faults, wire))
            }
            Body::Events(ev) => (Source::Events(timed_events(ev, reply).into_iter()), false),
            Body::Flood { token } => (
                Source::Flood {
                    prelude: vec![sse::role_chunk()].into_iter(),
                    content: sse::content_chunk(token),
                    reply: reply.clone(),
                    next: 0,
                },
                true,
            ),
            Body::AnthropicFlood { token } => (
                Source::Flood {
                    prelude: anthropic::flood_prelude().into_iter(),
                    content: anthropic::text_delta(token),
                    reply: reply.clone(),
                    next: 0,
                },
                true,
            ),
        };
        let fragment = faults
            .iter()
            .filter_map(|f| match f {
                Fault::Fragment(n) => Some((*n).max(1)),
                _ => None,
            })
            .min();
        let mut sent = 0;
        loop {
            for f in faults {
                match *f {
                    Fault::StallAfter { events, duration } if events == sent => match duration {
                        Some(d) => tokio::time::sleep(d).await,
                        None => std::future::pending::<()>().await,
                    },
                    Fault::HoldAfter { events, ref gate } if events == sent => gate.wait().await,
                    Fault::DisconnectAfter { events, reset } if events == sent => {
                        return Ok(Outcome::Disconnect { reset });
                    }
                    Fault::ErrorEventAfter(events) | Fault::EchoKeyEventAfter(events)
                        if events == sent =>
                    {
                        let event = match f {
                            Fault::EchoKeyEventAfter(_) => hostile::key_echo_event(wire, &self.key),
                            _ => wire.error_event(),
                        };
                        self.chunk(&event).await?;
                        sent += 1;
                        let now = Instant::now();
                        self.journal.update(self.idx, |r| {
                            r.events_sent = sent;
                            r.last_event_at = Some(now);
                        });
                        self.send(b"0\r\n\r\n").await?;
                        self.completed();
                        return Ok(Outcome::Completed);
                    }
                    _ => {}
                }
            }
            let Some((mut event, delay)) = source.next() else {
                break;
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            } else if flood {
                tokio::task::yield_now().await;
                self.wait_read().await;
            }
            if faults.contains(&Fault::MalformedAt(sent)) {
                event = Bytes::from_static(sse::GARBAGE);
            }
            if let Some((prompt, completion)) = usage
                && event.windows(5).any(|w| w == b"usage")
            {
                event = hostile::with_usage(&event, prompt, completion);
            }
            if echo_model && event.windows(5).any(|w| w == b"model") {
                event = hostile::with_model(&event, &self.key);
            }
            match fragment {
                Some(n) => {
                    for piece in event.chunks(n) {
                        self.chunk(piece).await?;
                        tokio::task::yield_now().await;
                    }
                }
                None => self.chunk(&event).await?,
            }
            sent += 1;
            let now = Instant::now();
            self.journal.update(self.idx, |r| {
                r.events_sent = sent;
                r.last_event_at = Some(now);
            });
        }
        self.send(b"0\r\n\r\n").await?;
        self.completed();
        Ok(Outcome::Completed)
    }
}

/// Hands out connection numbers.
pub(crate) fn next_conn(counter: &AtomicUsize) -> usize {
    counter.fetch_add(1, Ordering::SeqCst)
}
