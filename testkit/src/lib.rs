//! Test kit for Sluice: a mock model provider, OpenAI-compatible chat
//! completions and Anthropic Messages, for black-box tests.
//!
//! [`MockProvider`] is a raw HTTP/1.1 server on `tokio::net` (no hyper), so
//! tests control every byte and can observe exactly when the client closes
//! the connection, even while the mock is silent. It answers
//! `POST …/chat/completions` and `POST …/messages` (Anthropic) from one
//! [`Script`] of [`Reply`]s — recorded provider streams ([`Reply::fixture`]),
//! synthesized ones ([`Reply::text`], [`Reply::flood`],
//! [`Reply::anthropic_text`], [`Reply::anthropic_flood`], [`Reply::tool_call`],
//! [`Reply::anthropic_tool_call`]) — with recorded timing or a pace and a
//! speed factor, broken by [`Fault`]s, and records every request (with its `path`) and the fate
//! of its reply in a [`Journal`]. The path decides the shape of error bodies
//! and of non-streaming answers; stream bodies are sent as scripted.
//!
//! Everything time-related runs on tokio's clock, so tests can use
//! `#[tokio::test(start_paused = true)]`: a 60 s stall takes no real time.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_testkit::{Fault, MockProvider, Reply, Script};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let mock = MockProvider::start(
//!     Script::single(Reply::fixture("openai/text_stop.sse").pace(Duration::from_millis(20)))
//!         .then(Reply::text(&["Hel", "lo"]).fault(Fault::StallAfter { events: 2, duration: None })),
//! )
//! .await?;
//! let upstream = mock.base_url(); // "http://127.0.0.1:PORT/v1"
//! // ... point the gateway under test at `upstream` and send it requests ...
//! # let _ = upstream;
//! let journal = mock.journal();
//! assert!(journal.wait_for_requests(2, Duration::from_secs(5)).await);
//! // The second reply stalls forever: the gateway must give up and close.
//! let closed = journal.wait_closed(1, Duration::from_secs(60)).await;
//! assert!(closed.is_some());
//! assert_eq!(journal.requests()[1].events_sent, 2);
//! # Ok(())
//! # }
//! ```
//!
//! See [`guide`] for runnable examples: a mock with a fixture, composed
//! faults, the journal's answers, recorded timing and speed.
//!
//! Notes:
//! - A request is streamed unless its JSON body has `"stream": false` (the
//!   real APIs default to non-streaming); then a `chat.completion` (or, on
//!   `…/messages`, a `message`) is built from the scripted events.
//! - Header names in [`RecordedRequest::headers`] are lower-cased.
//! - A client that half-closes its sending side counts as closed.

mod anthropic;
mod conn;
mod fixture;
mod gate;
mod generate;
pub mod guide;
mod hostile;
mod http;
mod inspect;
mod journal;
mod script;
mod sse;
mod synth;
mod timing;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use fixture::{FixtureError, Recording, Wire, validate_dir};
pub use gate::Gate;
pub use generate::{TextGenerator, TextShape};
pub use inspect::{SentBeforeClose, ToolResult, lookup};
pub use journal::{Journal, RecordedRequest};
pub use script::{Body, Fault, Reply, Script, fixtures_dir};
pub use timing::{Timing, TimingError};

/// Connections waiting to be accepted (the kernel caps it at somaxconn).
const ACCEPT_BACKLOG: u32 = 4096;

/// A mock OpenAI-compatible and Anthropic provider (on `127.0.0.1`, or the
/// address given to [`MockProvider::serve`]). It serves until
/// dropped; dropping it aborts the accept loop and every connection task
/// (their sockets close at the runtime's next turn).
#[derive(Debug)]
pub struct MockProvider {
    addr: SocketAddr,
    journal: Journal,
    task: JoinHandle<()>,
}

/// Says whether the other end of the connection from the first address to
/// the second has read every byte written on it (see
/// [`MockProvider::start_paced`]).
pub type ReadByPeer = Arc<dyn Fn(SocketAddr, SocketAddr) -> bool + Send + Sync>;

/// The longest real time a paced flood waits for its reader before it
/// writes on anyway.
pub const PACING_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

impl MockProvider {
    /// Binds `127.0.0.1:0` and starts serving `script`.
    pub async fn start(script: Script) -> std::io::Result<MockProvider> {
        Self::start_with(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            Arc::new(script),
            None,
        )
        .await
    }

    /// Binds `addr` (any address; port 0 lets the system pick) and answers
    /// each model request with what `responder` says: the standalone mock
    /// (`sluice mock`), whose replies depend on the request.
    pub async fn serve(
        addr: SocketAddr,
        responder: Arc<dyn Responder>,
    ) -> std::io::Result<MockProvider> {
        Self::start_with(addr, responder, None).await
    }

    /// Like [`MockProvider::start`], but a flood (an endless or generated
    /// body, written without pauses) writes its next event only once
    /// `read_by_peer` says the client has read all that came before. Its
    /// lead over the reader is then one event, not whatever the kernel's
    /// socket buffers take while the reader waits for a CPU, so how far a
    /// flood got before the client cut it does not depend on the machine's
    /// load. `sluice test` passes a check of the kernel's counters.
    pub async fn start_paced(
        script: Script,
        read_by_peer: ReadByPeer,
    ) -> std::io::Result<MockProvider> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self::start_with(addr, Arc::new(script), Some(read_by_peer)).await
    }

    async fn start_with(
        addr: SocketAddr,
        responder: Arc<dyn Responder>,
        read_by_peer: Option<ReadByPeer>,
    ) -> std::io::Result<MockProvider> {
        // A deep accept queue: thousands of calls arriving at once are
        // accepted late instead of dropped (a dropped SYN costs the caller a
        // one-second retransmit, which no real provider's front end makes).
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // A mock restarted on a fixed port binds at once, whatever its
        // predecessor's connections left in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(ACCEPT_BACKLOG)?;
        let addr = listener.local_addr()?;
        let journal = Journal::default();
        let shared = Arc::new(conn::Shared {
            responder,
            journal: journal.clone(),
            next_slot: AtomicUsize::new(0),
            read_by_peer,
        });
        let task = tokio::spawn(accept_loop(listener, shared));
        Ok(MockProvider {
            addr,
            journal,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`; clients POST `{base_url}/chat/completions`
    /// or `{base_url}/messages`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// A handle on the request log (a cheap clone of a shared handle).
    pub fn journal(&self) -> Journal {
        self.journal.clone()
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A model request (`POST …/chat/completions` or `POST …/messages` with a
/// JSON object body), as a [`Responder`] sees it.
#[derive(Debug)]
pub struct ModelRequest<'a> {
    /// The API its path names.
    pub wire: Wire,
    /// The body, parsed (a JSON object).
    pub body: &'a serde_json::Value,
    /// The body's length in bytes.
    pub body_len: usize,
    /// Its arrival index among model requests (0, 1, ...).
    pub index: usize,
}

/// Decides what the mock answers. A [`Script`] answers by arrival order;
/// `sluice mock` answers from its flags (the request's wire, `max_tokens`,
/// `stream_options`). It runs on the connection's task for every request,
/// so it should be quick.
pub trait Responder: Send + Sync + 'static {
    /// The reply to a model request, or an error status and message,
    /// answered with a provider-shaped error body.
    fn reply(&self, req: &ModelRequest<'_>) -> Result<Reply, (u16, String)>;

    /// The answer to a request on any other route (e.g. a stats page):
    /// a status and a JSON body, or `None` for the usual 404.
    fn route(&self, _method: &str, _path: &str) -> Option<(u16, Vec<u8>)> {
        None
    }
}

impl Responder for Script {
    fn reply(&self, req: &ModelRequest<'_>) -> Result<Reply, (u16, String)> {
        self.reply_for(req.index)
            .cloned()
            .ok_or_else(|| (500, "sluice-testkit: the mock's script is empty".to_owned()))
    }
}

/// Accepts connections; the connection tasks live in a `JoinSet`, so
/// aborting this task (dropping its future) aborts them all.
async fn accept_loop(listener: TcpListener, shared: Arc<conn::Shared>) {
    let mut conns = JoinSet::new();
    let counter = AtomicUsize::new(0);
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let id = conn::next_conn(&counter);
                    conns.spawn(conn::serve(stream, shared.clone(), id));
                }
                // E.g. out of file descriptors: back off briefly.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
