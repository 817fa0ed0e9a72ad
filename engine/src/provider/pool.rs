//! Idle keep-alive connections of one endpoint, kept for later calls.
//!
//! Only a stream that ended cleanly checks its connection in (see
//! [`super::http`]); a stream dropped for any other reason drops its
//! connection, which closes the socket. Nothing polls an idle connection in
//! the background (that would need a spawned task per connection, which
//! nothing would track), so a connection the server closed while idle is
//! noticed when it is checked out: checkout polls each candidate once
//! without blocking and discards the ones that ended, the ones whose sender
//! is not ready for a request, and the ones idle longer than the idle limit.
//! Checking in also drops the expired ones and those past the cap.
//!
//! The cost of that: a provider that stops being called keeps up to
//! `max_idle` sockets open (or half-closed by the server) until its next
//! call, or until the catalog holding its endpoint is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::time::Instant;

/// A hyper HTTP/1.1 connection: polling it does the connection's I/O.
pub(super) type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;
/// Sends requests on the connection of a [`ConnFuture`].
pub(super) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// How long a connection may stay idle before it is closed instead of
/// reused. Shorter than the idle timeouts that providers and their load
/// balancers usually apply (60 s and more), so that we rarely pick a
/// connection the server is closing at that very moment.
pub(super) const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// Most idle connections kept per endpoint; more are closed. Bounds the
/// sockets a provider holds open after a burst of concurrent calls.
pub(super) const MAX_IDLE: usize = 256;

/// The idle connections of one endpoint, most recently checked in last.
pub(super) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_limit: Duration,
}

struct Idle {
    sender: Sender,
    conn: ConnFuture,
    since: Instant,
}

impl Pool {
    pub(super) fn new() -> Self {
        Self::with_limits(MAX_IDLE, IDLE_LIMIT)
    }

    fn with_limits(max_idle: usize, idle_limit: Duration) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_limit,
        }
    }

    /// Keeps a connection whose last response was read to its end (or
    /// whose stream was dropped right after the provider's end marker: hyper
    /// then reads the rest of the body at the next poll and closes the
    /// connection if more than the body's end was left).
    pub(super) fn checkin(&self, sender: Sender, conn: ConnFuture) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.lock();
            idle.push_back(Idle {
                sender,
                conn,
                since: now,
            });
            while idle.len() > self.max_idle || idle.front().is_some_and(|c| self.expired(c, now)) {
                closed.extend(idle.pop_front());
            }
        }
        // Closing sockets does not need the lock.
        drop(closed);
    }

    /// The most recently checked-in connection that is still usable, if
    /// any. The ones found dead or expired on the way are closed.
    pub(super) fn checkout(&self) -> Option<(Sender, ConnFuture)> {
        let now = Instant::now();
        loop {
            let candidate = {
                let mut idle = self.lock();
                let candidate = idle.pop_back()?;
                if self.expired(&candidate, now) {
                    // The rest were checked in earlier: expired too.
                    let stale = std::mem::take(&mut *idle);
                    drop(idle);
                    drop((candidate, stale));
                    return None;
                }
                candidate
            };
            if let Some(ready) = candidate.ready() {
                return Some(ready);
            }
        }
    }

    fn expired(&self, c: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(c.since) >= self.idle_limit
    }

    /// A poisoned lock only means another thread panicked while holding
    /// it; the queue itself is always consistent.
    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().len()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.lock().len())
            .field("max_idle", &self.max_idle)
            .finish()
    }
}

impl Idle {
    /// Polls the connection once, with a waker that does nothing, so hyper
    /// does the I/O that is already possible: it reads an EOF or reset the
    /// server sent while the connection was idle (the future then
    /// resolves), or the rest of the last body, and asks for the next
    /// request. `None` unless the connection is open and ready for one.
    fn ready(mut self) -> Option<(Sender, ConnFuture)> {
        let mut cx = Context::from_waker(Waker::noop());
        if self.conn.as_mut().poll(&mut cx).is_ready() {
            return None;
        }
        (self.sender.is_ready() && !self.sender.is_closed()).then_some((self.sender, self.conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection to `listener`'s server side, which is returned too (drop
    /// it to close the connection from the server's side).
    async fn connection(listener: &TcpListener) -> (Sender, ConnFuture, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        (sender, Box::pin(conn), server)
    }

    async fn listener() -> TcpListener {
        TcpListener::bind(("127.0.0.1", 0)).await.unwrap()
    }

    #[tokio::test]
    async fn checkout_takes_the_most_recent_and_the_cap_closes_the_oldest() {
        let l = listener().await;
        let pool = Pool::with_limits(2, IDLE_LIMIT);
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (s, c, server) = connection(&l).await;
            pool.checkin(s, c);
            servers.push(server);
        }
        assert_eq!(pool.idle_count(), 2);
        // The first connection was closed by the cap: its server side reads EOF.
        let mut buf = [0u8; 1];
        use tokio::io::AsyncReadExt;
        assert_eq!(servers[0].read(&mut buf).await.unwrap(), 0);
        // Dropping the newest's server side: checkout skips it (once the
        // EOF arrived) and hands out the one before it.
        drop(servers.pop());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout().is_some());
        assert_eq!(pool.idle_count(), 0);
        assert!(pool.checkout().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_limit_are_closed_not_reused() {
        let l = listener().await;
        let pool = Pool::with_limits(8, Duration::from_secs(30));
        let (s, c, _server) = connection(&l).await;
        pool.checkin(s, c);
        tokio::time::advance(Duration::from_secs(29)).await;
        let (s, c) = pool.checkout().expect("29 s idle is within the limit");
        pool.checkin(s, c);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle_count(), 0);
    }
}
