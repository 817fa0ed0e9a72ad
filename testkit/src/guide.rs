//! Using the testkit from your own tests: every example here is a doctest
//! that runs.
//!
//! The mock speaks HTTP/1.1 on `127.0.0.1`; point the client under test
//! (your gateway, an SDK) at [`MockProvider::base_url`](crate::MockProvider::base_url).
//! The examples below talk to it with a few raw bytes so that they need no
//! HTTP client. Everything runs on tokio's clock: with
//! `start_paused = true` (tokio's `test-util` feature) a minute of stall
//! takes no real time and every time you measure is exact.
//!
//! # Start a mock, pick a fixture, read the journal
//!
//! ```
//! use std::time::Duration;
//! use sluice_testkit::{MockProvider, Reply, Script};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> std::io::Result<()> {
//! // A recorded OpenAI stream (fixtures/recorded/openai/text_stop.sse), 20 ms per event.
//! let mock = MockProvider::start(Script::single(
//!     Reply::fixture("openai/text_stop.sse").pace(Duration::from_millis(20)),
//! ))
//! .await?;
//! assert!(mock.base_url().starts_with("http://127.0.0.1:"));
//!
//! // What your gateway would send to `{base_url}/chat/completions`:
//! let body = r#"{"model":"gpt-4o","stream":true,"max_tokens":64,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
//! let mut tcp = tokio::net::TcpStream::connect(mock.addr()).await?;
//! let head = format!(
//!     "POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
//!      connection: close\r\ncontent-length: {}\r\n\r\n",
//!     body.len()
//! );
//! tcp.write_all(head.as_bytes()).await?;
//! tcp.write_all(body.as_bytes()).await?;
//! let mut answer = Vec::new();
//! tcp.read_to_end(&mut answer).await?;
//! assert!(String::from_utf8_lossy(&answer).contains("data: [DONE]"));
//!
//! // The journal: what arrived, what was sent.
//! let journal = mock.journal();
//! let req = journal.wait_reply_done(0, Duration::from_secs(5)).await.unwrap();
//! assert_eq!(req.max_tokens(), Some(64)); // was max_tokens clamped?
//! assert!(req.include_usage()); // was usage asked for?
//! assert_eq!(req.events_sent, 34);
//! assert!(req.completed_at.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! # Add faults (they compose) and measure when the client gave up
//!
//! A slow pace, then silence after 10 events: a gateway with a 5 s idle
//! deadline must close the connection right after it. Here the "gateway"
//! is a bare socket that hangs up 5 s after the last event; the journal
//! says how late that was and what had been sent.
//!
//! ```
//! use std::time::Duration;
//! use sluice_testkit::{Fault, MockProvider, Reply, Script};
//! use tokio::io::AsyncWriteExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> std::io::Result<()> {
//! let reply = Reply::fixture("openai/text_stop.sse")
//!     .pace(Duration::from_millis(200))
//!     .fault(Fault::StallAfter { events: 10, duration: None }) // silent until the client leaves
//!     .fault(Fault::Fragment(7)); // and every event in 7-byte writes
//! let mock = MockProvider::start(Script::single(reply)).await?;
//! let journal = mock.journal();
//!
//! let mut tcp = tokio::net::TcpStream::connect(mock.addr()).await?;
//! let body = r#"{"stream":true,"messages":[]}"#;
//! let req = format!(
//!     "POST /v1/chat/completions HTTP/1.1\r\nhost: m\r\ncontent-length: {}\r\n\r\n{body}",
//!     body.len()
//! );
//! tcp.write_all(req.as_bytes()).await?;
//! // 10 events at 200 ms, then silence (2.6 KB: the socket buffers them).
//! tokio::time::sleep(Duration::from_secs(3)).await;
//! let rec = journal.request(0).unwrap();
//! assert_eq!(rec.events_sent, 10);
//! let idle_deadline = rec.idle_deadline(Duration::from_secs(5)).unwrap();
//! tokio::time::sleep_until(idle_deadline).await;
//! drop(tcp); // the "gateway" gives up at its deadline
//!
//! let late = journal
//!     .wait_closed_after(0, idle_deadline, Duration::from_secs(60))
//!     .await
//!     .unwrap();
//! assert!(late <= Duration::from_millis(100));
//! let rec = journal.request(0).unwrap();
//! let sent = rec.sent_before_close().unwrap();
//! assert_eq!(sent.events, 10);
//! assert_eq!(sent.bytes, rec.bytes_sent);
//! # Ok(())
//! # }
//! ```
//!
//! # Recorded timing, speed, and both wire formats
//!
//! A recording's `NAME.timing` sidecar (see [`Timing`](crate::Timing)) is
//! loaded with it; [`Reply::speed`](crate::Reply::speed) plays it faster
//! or slower. Replies for the Anthropic Messages wire are built the same
//! way and served on `…/messages`.
//!
//! ```
//! use std::time::Duration;
//! use sluice_testkit::{Fault, MockProvider, Recording, Reply, Script, Wire, fixtures_dir};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Checked load: a bad event or timing line is an error naming file:line.
//! let rec = Recording::load(&fixtures_dir().join("anthropic/text_timed.sse"))?;
//! assert_eq!(rec.wire, Wire::Anthropic);
//! let timing = rec.timing.clone().expect("recorded with sluice record");
//! assert_eq!(timing.events.len(), rec.events.len());
//!
//! let twice_as_fast = rec.reply().speed(2.0);
//! assert_eq!(twice_as_fast.event_delay(4), timing.events[4] / 2);
//!
//! // Turn by turn: an overload first, then the answer with an
//! // `event: error` after 5 events (no `message_stop`).
//! let mock = MockProvider::start(
//!     Script::single(Reply::anthropic_text(&["a"]).fault(Fault::Status {
//!         status: 529,
//!         retry_after: None,
//!     }))
//!     .then(twice_as_fast.fault(Fault::ErrorEventAfter(5))),
//! )
//! .await?;
//! assert!(mock.base_url().ends_with("/v1"));
//! # Ok(())
//! # }
//! ```
