//! Idle keep-alive connections of one endpoint, kept for later calls.
//!
//! Only a stream that ended cleanly checks its connection in (see
//! [`super::http`]); a stream dropped for any other reason drops its
//! connection, which closes the socket. Nothing polls an idle connection in
//! the background (that would need a spawned task per connection, which
//! nothing would track), so a connection the server closed while idle is
//! noticed when it is checked out: checkout polls each candidate once
//! without blocking and discards the ones that ended, the ones whose last
//! body did not end cleanly, and the ones idle longer than the idle limit.
//! Checking in also drops the expired ones and those past the cap.
//!
//! The cost of that: a provider that stops being called keeps up to
//! `max_idle` sockets open (or half-closed by the server) until its next
//! call, or until the catalog holding its endpoint is dropped.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::h1::Connection;

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
    conn: Connection,
    since: Instant,
}

impl Pool {
    pub(super) fn new() -> Self {
        Self::with_limits(MAX_IDLE, IDLE_LIMIT)
    }

    pub(super) fn with_limits(max_idle: usize, idle_limit: Duration) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_limit,
        }
    }

    /// Keeps a connection whose last response was read to its end (or
    /// whose stream was dropped right after the provider's end marker: the
    /// rest of the body is read at checkout, and the connection is closed
    /// if more than the body's end was left).
    pub(super) fn checkin(&self, conn: Connection) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.lock();
            idle.push_back(Idle { conn, since: now });
            while idle.len() > self.max_idle || idle.front().is_some_and(|c| self.expired(c, now)) {
                closed.extend(idle.pop_front());
            }
        }
        // Closing sockets does not need the lock.
        drop(closed);
    }

    /// The most recently checked-in connection that is still usable, if
    /// any. The ones found dead or expired on the way are closed.
    pub(super) fn checkout(&self) -> Option<Connection> {
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
    /// Polls the connection once, with a waker that does nothing, so the
    /// I/O that is already possible happens: the rest of the last body, or
    /// an EOF or reset the server sent while the connection was idle.
    /// `None` unless the connection is open and ready for a request.
    fn ready(mut self) -> Option<Connection> {
        let mut cx = Context::from_waker(Waker::noop());
        self.conn.poll_reusable(&mut cx).then_some(self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::h1::Io;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection to `listener`'s server side, which is returned too (drop
    /// it to close the connection from the server's side).
    async fn connection(listener: &TcpListener) -> (Connection, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Connection::new(Io::Plain(client)), server)
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
            let (c, server) = connection(&l).await;
            pool.checkin(c);
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

    #[tokio::test]
    async fn a_connection_with_unread_bytes_is_not_handed_out() {
        use tokio::io::AsyncWriteExt;
        let l = listener().await;
        let pool = Pool::with_limits(8, IDLE_LIMIT);
        let (c, mut server) = connection(&l).await;
        pool.checkin(c);
        // Bytes nobody asked for: the connection's framing is lost.
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn connections_idle_past_the_limit_are_closed_not_reused() {
        let l = listener().await;
        let pool = Pool::with_limits(8, Duration::from_secs(30));
        let (c, _server) = connection(&l).await;
        pool.checkin(c);
        tokio::time::advance(Duration::from_secs(29)).await;
        let c = pool.checkout().expect("29 s idle is within the limit");
        pool.checkin(c);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(pool.checkout().is_none());
        assert_eq!(pool.idle_count(), 0);
    }
}
