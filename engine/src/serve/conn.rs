//! What one client connection may hold, and how many there may be.
//!
//! Each connection task runs hyper's connection future under a watchdog
//! ([`watch`]) with one timer: the header deadline while a request head is
//! arriving, the idle deadline while no request is in flight, the write
//! deadline while the socket takes no byte of a response (a client that
//! stopped reading), none while a request is being served otherwise (the
//! body has its own deadline in `request::read_json_body`, the response its
//! pipeline's deadlines). The watchdog learns of changes through
//! [`ConnState`]: the socket wrapper ([`Watched`]) flags the first byte of a
//! head and a write refused or taken again, the service counts requests in
//! and out ([`InFlight`]). Those are a few relaxed atomics per
//! read and one wake-up per change, never a timer per read.
//!
//! On HTTP/2 the bytes between streams are frames (pings, settings, window
//! updates) that say nothing about a request, so once a connection is known
//! to be h2 they do not start a head: a connection with no stream open is
//! idle, and a HEADERS block trickled in between streams is bounded by the
//! idle deadline (a new connection's first stream by the header deadline).
//!
//! [`Gate`] admits connections: up to `max_connections` are served; beyond
//! that, a reserve of `reserved_connections` answers only the health paths
//! and refuses the rest with 503, one request each, oldest evicted first.
//! Descriptors for the cap and the reserve are budgeted from
//! `RLIMIT_NOFILE`, so accepting never fails for want of one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use http_body::Frame;

use super::ResponseBody;
use crate::compile::ConnectionLimits;

/// Paths a reserve connection still serves: the probes that tell an
/// orchestrator the process is alive and ready.
pub(super) const HEALTH_PATHS: &[&str] = &["/healthz", "/readyz"];

/// How long a connection closed for being idle (or a reserve connection
/// after its one answer) may take to say goodbye (h2 GOAWAY) before it is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Descriptors kept for everything that is not a client connection: ledger
/// and tool databases, the providers' idle pools, logs, stdio.
const FD_OVERHEAD: u64 = 512;

/// The cap when the descriptor limit allows more: idle connections cost
/// memory (hyper's buffers) even when descriptors are plentiful.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// One connection as its watchdog sees it.
#[derive(Debug, Default)]
pub(super) struct ConnState {
    /// Requests whose response is not finished (more than one on h2).
    in_flight: AtomicU32,
    /// Requests seen so far.
    requests: AtomicU32,
    /// Bytes arrived while no request was in flight: a head has begun.
    head: AtomicBool,
    /// An HTTP/2 connection: frames between requests (pings, settings)
    /// are not the start of a head.
    h2: AtomicBool,
    /// The socket refused a write (its send buffer is full) and has taken
    /// no byte since: the client is not reading.
    write_blocked: AtomicBool,
    /// A reserve connection: health paths only, one request.
    reserve: bool,
    changed: Notify,
}

impl ConnState {
    pub(super) fn new(reserve: bool) -> Arc<ConnState> {
        Arc::new(ConnState {
            // A new connection owes its first head from the accept on.
            head: AtomicBool::new(true),
            reserve,
            ..ConnState::default()
        })
    }

    /// Called on every read that returned bytes: the hot path, so only
    /// relaxed loads unless this is the first byte of a head.
    #[inline]
    fn on_bytes(&self) {
        if !self.head.load(Relaxed) && self.in_flight.load(Relaxed) == 0 && !self.h2.load(Relaxed) {
            self.head.store(true, Relaxed);
            self.changed.notify_one();
        }
    }

    /// Called on every write: a relaxed load unless the socket's state
    /// (refusing bytes or taking them) changed.
    #[inline]
    fn on_write<T>(&self, r: &Poll<io::Result<T>>) {
        let blocked = r.is_pending();
        if self.write_blocked.load(Relaxed) != blocked {
            self.write_blocked.store(blocked, Relaxed);
            self.changed.notify_one();
        }
    }

    /// A request's head arrived and hyper called the service. The guard
    /// ends it when dropped (with the response body, or with the service
    /// future if the connection went away first).
    pub(super) fn request_started(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 && !self.h2.load(Relaxed) {
            self.h2.store(true, Relaxed);
        }
        self.requests.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        self.head.store(false, Relaxed);
        self.changed.notify_one();
        InFlight(self.clone())
    }
}

/// One request in flight on a connection.
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    /// Whether the request came on a reserve connection.
    pub(super) fn reserve(&self) -> bool {
        self.0.reserve
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // On h2 this runs on the stream's task: the notify wakes the
        // connection's watchdog, which then reads the counts afresh.
        if self.0.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.0.changed.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight on its
/// connection until hyper has sent it (or dropped it).
pub(super) struct ConnBody {
    pub(super) body: ResponseBody,
    pub(super) _in_flight: InFlight,
}

impl http_body::Body for ConnBody {
    type Data = Bytes;
    type Error = Infallible;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket that tells its connection's state when bytes arrive.
pub(super) struct Watched<T> {
    io: T,
    state: Arc<ConnState>,
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, state: Arc<ConnState>) -> Self {
        Watched { io, state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.on_bytes();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.state.on_write(&r);
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.state.on_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.state.on_write(&r);
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Why the watchdog's timer is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deadline {
    Header,
    Idle,
    /// A response is waiting for a client that reads nothing.
    Write,
    /// Graceful close started; drop the connection if it lingers.
    Close,
}

/// Why a connection was closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closed {
    HeaderTimeout,
    /// The client took no response byte for `write_timeout`.
    WriteTimeout,
    Evicted,
    /// A reserve connection that gave its one answer, or a graceful close
    /// that did not finish in time.
    Done,
}

/// Runs one connection until it ends or its watchdog closes it.
///
/// `graceful` asks hyper to finish what is in flight and close (h2:
/// GOAWAY). `shutdown` is the server's; `evicted` the reserve's.
pub(super) async fn watch<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    state: &ConnState,
    limits: &ConnectionLimits,
    shutdown: &CancellationToken,
    evicted: Option<&CancellationToken>,
) -> Result<Result<(), E>, Closed>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    let sleep = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(sleep);
    let mut deadline = Some(Deadline::Header);
    let mut stopping = false;
    let evicted = async {
        match evicted {
            Some(t) => t.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(evicted);
    loop {
        // Biased: a finished connection wins, and a change notified
        // together with an expired timer is read before the timer acts on
        // a phase that has already passed.
        tokio::select! {
            biased;
            r = conn.as_mut() => return Ok(r),
            () = state.changed.notified() => {
                if deadline == Some(Deadline::Close) {
                    continue;
                }
                let now = Instant::now();
                if state.write_blocked.load(Relaxed) {
                    if deadline != Some(Deadline::Write) {
                        sleep.as_mut().reset(now + limits.write_timeout);
                        deadline = Some(Deadline::Write);
                    }
                } else if state.in_flight.load(Relaxed) > 0 {
                    deadline = None;
                } else if state.reserve && state.requests.load(Relaxed) > 0 {
                    graceful(conn.as_mut());
                    sleep.as_mut().reset(now + CLOSE_GRACE);
                    deadline = Some(Deadline::Close);
                } else if state.head.load(Relaxed) {
                    if deadline != Some(Deadline::Header) {
                        sleep.as_mut().reset(now + limits.header_timeout);
                        deadline = Some(Deadline::Header);
                    }
                } else {
                    sleep.as_mut().reset(now + limits.idle_timeout);
                    deadline = Some(Deadline::Idle);
                }
            }
            () = shutdown.cancelled(), if !stopping => {
                // The server stops: hyper ends each connection after its
                // requests in flight; `Server::run` bounds the wait.
                stopping = true;
                graceful(conn.as_mut());
            }
            () = &mut evicted => return Err(Closed::Evicted),
            () = &mut sleep, if deadline.is_some() => {
                // A request may have begun (on another task, for h2) just
                // as the timer fired: never cut one that is in flight.
                let busy = state.in_flight.load(Relaxed) > 0;
                match deadline {
                    // Nothing more can be sent to a client that reads
                    // nothing: drop the connection and what it holds.
                    Some(Deadline::Write) if state.write_blocked.load(Relaxed) => {
                        return Err(Closed::WriteTimeout);
                    }
                    // Nothing sensible can be answered to half a head.
                    Some(Deadline::Header) if !busy => return Err(Closed::HeaderTimeout),
                    Some(Deadline::Idle) if !busy => {
                        tracing::debug!("closing an idle connection");
                        graceful(conn.as_mut());
                        sleep.as_mut().reset(Instant::now() + CLOSE_GRACE);
                        deadline = Some(Deadline::Close);
                    }
                    Some(Deadline::Close) if !busy => return Err(Closed::Done),
                    // Closing, but a request is still answered: look again later.
                    Some(Deadline::Close) => sleep.as_mut().reset(Instant::now() + CLOSE_GRACE),
                    _ => deadline = None,
                }
            }
        }
    }
}

/// Admits connections: the cap, then the reserve.
pub(super) struct Gate {
    max: usize,
    open: Arc<AtomicUsize>,
    reserve: Arc<Reserve>,
    /// Whether the last connection went to the reserve (logged once per
    /// episode, not per connection).
    at_cap: bool,
}

pub(super) struct Reserve {
    size: usize,
    /// Oldest first; a token cancelled evicts its connection.
    slots: Mutex<VecDeque<(u64, CancellationToken)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A connection's place: one of the cap's, or one of the reserve's.
pub(super) enum Ticket {
    Served(Arc<AtomicUsize>),
    Reserve {
        reserve: Arc<Reserve>,
        id: u64,
        evicted: CancellationToken,
    },
}

impl Ticket {
    pub(super) fn is_reserve(&self) -> bool {
        matches!(self, Ticket::Reserve { .. })
    }

    pub(super) fn evicted(&self) -> Option<&CancellationToken> {
        match self {
            Ticket::Served(_) => None,
            Ticket::Reserve { evicted, .. } => Some(evicted),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        match self {
            Ticket::Served(open) => {
                open.fetch_sub(1, Relaxed);
            }
            Ticket::Reserve { reserve, id, .. } => {
                let mut slots = reserve.slots.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = slots.iter().position(|(s, _)| s == id) {
                    slots.remove(i);
                }
            }
        }
    }
}

impl Gate {
    pub(super) fn new(max: usize, reserved: usize) -> Gate {
        Gate {
            max,
            open: Arc::new(AtomicUsize::new(0)),
            reserve: Arc::new(Reserve {
                size: reserved.max(1),
                slots: Mutex::new(VecDeque::new()),
                next_id: Default::default(),
            }),
            at_cap: false,
        }
    }

    /// A place for a connection just accepted. Only the accept loop calls
    /// this, so the check and the increment cannot race each other (tasks
    /// ending only lower the count).
    pub(super) fn admit(&mut self) -> Ticket {
        if self.open.load(Relaxed) < self.max {
            self.open.fetch_add(1, Relaxed);
            self.at_cap = false;
            return Ticket::Served(self.open.clone());
        }
        if !self.at_cap {
            self.at_cap = true;
            tracing::warn!(
                max_connections = self.max,
                "connection cap reached: new connections answer health checks only, others get 503"
            );
        }
        let id = self.reserve.next_id.fetch_add(1, Relaxed);
        let evicted = CancellationToken::new();
        let mut slots = self.reserve.slots.lock().unwrap_or_else(|p| p.into_inner());
        // A full reserve makes room by closing its oldest connection: a
        // flood of silent sockets cannot hold it, and a health check
        // (answered within milliseconds) is never the oldest for long.
        while slots.len() >= self.reserve.size {
            if let Some((_, oldest)) = slots.pop_front() {
                oldest.cancel();
            }
        }
        slots.push_back((id, evicted.clone()));
        Ticket::Reserve {
            reserve: self.reserve.clone(),
            id,
            evicted,
        }
    }
}

/// The connection cap for the descriptor limit `nofile` (`None`: unknown):
/// half of what is left after the reserve and [`FD_OVERHEAD`], since a
/// client connection can hold one upstream connection at the same time.
/// Returns the cap and whether a configured cap had to be lowered.
pub(super) fn connection_cap(
    configured: Option<usize>,
    reserved: usize,
    nofile: Option<u64>,
) -> (usize, bool) {
    let budget = nofile.map_or(usize::MAX, |n| {
        let left = n.saturating_sub(FD_OVERHEAD + reserved as u64) / 2;
        usize::try_from(left).unwrap_or(usize::MAX).max(1)
    });
    match configured {
        None => (DEFAULT_MAX_CONNECTIONS.min(budget), false),
        Some(c) if c > budget => (budget, true),
        Some(c) => (c, false),
    }
}

/// Raises the soft descriptor limit to the hard one and returns the soft
/// limit in force (`None` if it cannot be read).
pub(super) fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_reserve_and_the_upstreams() {
        // 1024 - 512 - 64 = 448 descriptors, two per served connection.
        assert_eq!(connection_cap(None, 64, Some(1024)), (224, false));
        assert_eq!(
            connection_cap(None, 64, Some(1 << 20)),
            (DEFAULT_MAX_CONNECTIONS, false)
        );
        assert_eq!(connection_cap(Some(50), 64, Some(1024)), (50, false));
        assert_eq!(connection_cap(Some(5000), 64, Some(1024)), (224, true));
        assert_eq!(connection_cap(Some(5000), 64, None), (5000, false));
        assert_eq!(connection_cap(None, 64, Some(100)), (1, false));
        assert_eq!(connection_cap(None, 64, Some(u64::MAX)).0, 10_000);
    }

    #[test]
    fn the_reserve_evicts_its_oldest_when_full() {
        let mut gate = Gate::new(2, 2);
        let served: Vec<Ticket> = (0..2).map(|_| gate.admit()).collect();
        assert!(served.iter().all(|t| !t.is_reserve()));
        let r1 = gate.admit();
        let r2 = gate.admit();
        assert!(r1.is_reserve() && r2.is_reserve());
        let r3 = gate.admit();
        assert!(r1.evicted().unwrap().is_cancelled());
        assert!(!r2.evicted().unwrap().is_cancelled());
        assert!(!r3.evicted().unwrap().is_cancelled());
        drop(r1);
        drop(served);
        // Room under the cap again.
        assert!(!gate.admit().is_reserve());
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let soft = raise_nofile_limit().expect("RLIMIT_NOFILE readable");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_nofile_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
