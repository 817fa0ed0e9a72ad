//! Client-side SSE encoding: one [`Event`] -> `event:` + `id:` + `data:` +
//! blank line, and the streaming response body built on the event channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use serde::Serialize;

use crate::run::{ErrorCode, Event, EventReceiver, UsageReport};

#[derive(Serialize)]
struct DeltaData<'a> {
    text: &'a str,
}

#[derive(Serialize)]
struct ErrorData<'a> {
    code: ErrorCode,
    message: &'a str,
}

#[derive(Serialize)]
struct DoneData<'a> {
    finish_reason: &'a str,
}

fn write_event<T: Serialize>(buf: &mut BytesMut, name: &str, id: u64, data: &T) {
    buf.put_slice(b"event: ");
    buf.put_slice(name.as_bytes());
    buf.put_slice(b"\nid: ");
    buf.put_slice(itoa::Buffer::new().format(id).as_bytes());
    buf.put_slice(b"\ndata: ");
    // JSON never contains a raw newline, so one data line suffices.
    if serde_json::to_writer((&mut *buf).writer(), data).is_err() {
        buf.put_slice(b"{}");
    }
    buf.put_slice(b"\n\n");
}

/// Appends the SSE encoding of `ev` (with `id` for named events) to `buf`.
pub fn encode(ev: &Event, id: u64, buf: &mut BytesMut) {
    match ev {
        Event::Start(start) => write_event(buf, "start", id, start),
        Event::Delta(text) => write_event(buf, "delta", id, &DeltaData { text }),
        Event::Refusal(text) => write_event(buf, "refusal", id, &DeltaData { text }),
        // Sluice's own events give each call whole, as `tool_call`, and
        // do not relay reasoning.
        // (Nor do its requests ask for several choices or for logprobs.)
        // A matched stop sequence is `done` with `stop`.
        Event::ToolCallDelta(_)
        | Event::ToolCallEnd(_)
        | Event::Reasoning(_)
        | Event::ReasoningSignature(_)
        | Event::RedactedReasoning(_)
        | Event::Choice(_)
        | Event::ChoiceDone { .. }
        | Event::Logprobs(_)
        | Event::StopSequence(_) => {}
        Event::ToolCall(call) => write_event(buf, "tool_call", id, call),
        Event::ToolResult(result) => write_event(buf, "tool_result", id, result),
        Event::Usage(u) => write_event::<UsageReport>(buf, "usage", id, u),
        Event::Error { code, message, .. } => write_event(
            buf,
            "error",
            id,
            &ErrorData {
                code: *code,
                message,
            },
        ),
        Event::Done { finish_reason } => write_event(buf, "done", id, &DoneData { finish_reason }),
        Event::KeepAlive => buf.put_slice(b": keep-alive\n\n"),
    }
}

/// Turns run events into the bytes of one streaming wire format.
pub trait Encoder: Send + Unpin + 'static {
    fn encode(&mut self, ev: Event, buf: &mut BytesMut);
}

/// Sluice's own SSE events, numbered with `id:` (keep-alives are not).
#[derive(Default)]
pub struct Native {
    next_id: u64,
}

impl Encoder for Native {
    fn encode(&mut self, ev: Event, buf: &mut BytesMut) {
        if matches!(
            ev,
            Event::ToolCallDelta(_)
                | Event::Reasoning(_)
                | Event::ReasoningSignature(_)
                | Event::RedactedReasoning(_)
                | Event::StopSequence(_)
        ) {
            return;
        }
        if !matches!(ev, Event::KeepAlive) {
            self.next_id += 1;
        }
        encode(&ev, self.next_id, buf);
    }
}

/// The body of a streaming response: each event becomes one frame as soon
/// as it arrives, so hyper writes (and flushes) it without waiting.
pub struct EventBody<E> {
    rx: EventReceiver,
    buf: BytesMut,
    encoder: E,
}

/// Bytes reserved before encoding an event: a delta event is usually
/// under 100 bytes, so most frames take one small allocation.
const FRAME_RESERVE: usize = 256;

/// The native stream of `/v1/pipelines/{name}`.
pub type SseBody = EventBody<Native>;

impl<E: Encoder> EventBody<E> {
    pub fn new(rx: EventReceiver, encoder: E) -> Self {
        Self {
            rx,
            // Nothing held while the stream is idle; see `poll_frame`.
            buf: BytesMut::new(),
            encoder,
        }
    }
}

impl<E: Encoder> http_body::Body for EventBody<E> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // Take every event already waiting, so a burst is one write.
        let mut ended = false;
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    // Room for a typical event, allocated only once one has
                    // arrived: thousands of idle streams hold no buffers.
                    this.buf.reserve(FRAME_RESERVE);
                    this.encoder.encode(ev, &mut this.buf);
                    if this.buf.len() >= 16 * 1024 {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !this.buf.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
        }
        if ended {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_named_numbered_and_end_with_a_blank_line() {
        let mut buf = BytesMut::new();
        encode(&Event::Delta("a\nb \"c\"".into()), 3, &mut buf);
        assert_eq!(
            &buf[..],
            b"event: delta\nid: 3\ndata: {\"text\":\"a\\nb \\\"c\\\"\"}\n\n"
        );
        buf.clear();
        encode(
            &Event::Error {
                code: ErrorCode::TimeoutIdle,
                message: "x".into(),
                kind: None,
            },
            9,
            &mut buf,
        );
        assert_eq!(
            &buf[..],
            b"event: error\nid: 9\ndata: {\"code\":\"timeout.idle\",\"message\":\"x\"}\n\n"
        );
        buf.clear();
        encode(&Event::KeepAlive, 0, &mut buf);
        assert_eq!(&buf[..], b": keep-alive\n\n");
    }
}
