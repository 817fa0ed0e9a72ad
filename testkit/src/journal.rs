//! The shared record of what the mock received and sent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// One request as the mock saw it, and how its reply went.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent, query included.
    pub path: String,
    /// Header names lower-cased, values as sent, in order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, `Null` if it is not JSON.
    pub body: serde_json::Value,
    pub raw_body: bytes::Bytes,
    /// When the whole request had been read.
    pub received_at: Instant,
    /// SSE events written so far.
    pub events_sent: usize,
    /// Response body bytes (the SSE payload, without chunk framing) written so far.
    pub bytes_sent: usize,
    /// When the response headers were written, if they were.
    pub headers_sent_at: Option<Instant>,
    /// When the last SSE event was written (its last byte), if any was.
    pub last_event_at: Option<Instant>,
    /// When the mock saw the client close the connection (read EOF, reset
    /// or write error) BEFORE it finished its reply. `None` if the reply
    /// was finished first, or the connection is still open.
    pub client_closed_at: Option<Instant>,
    /// When the mock finished writing its reply (terminating chunk
    /// written), if it did.
    pub completed_at: Option<Instant>,
    /// When the client closed the connection that carried this request,
    /// mid-reply (then equal to `client_closed_at`) or later, e.g. an idle
    /// keep-alive connection. `None` while open or if the mock closed it.
    pub connection_closed_at: Option<Instant>,
    /// Which accepted connection (0, 1, ...) carried the request; equal
    /// numbers mean a reused keep-alive connection.
    pub connection: usize,
    /// The script slot that answered, `None` if the request was not served
    /// from the script (404, 400).
    pub slot: Option<usize>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Entry {
    rec: RecordedRequest,
    /// The connection is gone (closed by either side).
    conn_done: bool,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<Entries>,
    changed: Notify,
}

/// The requests kept, oldest first, and how many older ones were let go.
#[derive(Default)]
struct Entries {
    kept: VecDeque<Entry>,
    /// The index of `kept[0]`: requests before it were dropped.
    first: usize,
    /// Most requests kept (`None`: all of them).
    limit: Option<usize>,
}

impl Entries {
    fn get(&self, i: usize) -> Option<&Entry> {
        self.kept.get(i.checked_sub(self.first)?)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut Entry> {
        self.kept.get_mut(i.checked_sub(self.first)?)
    }

    /// Requests seen so far, dropped ones included.
    fn len(&self) -> usize {
        self.first + self.kept.len()
    }

    fn trim(&mut self) {
        let Some(limit) = self.limit else { return };
        while self.kept.len() > limit {
            self.kept.pop_front();
            self.first += 1;
        }
    }
}

/// A cheap, cloneable handle on the mock's request log.
#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("requests", &self.requests())
            .finish()
    }
}

impl Journal {
    /// Keeps only the last `n` requests (at least one) from now on, so a
    /// mock serving millions of requests holds a bounded log. Indices stay
    /// those of arrival order; older requests are gone from [`requests`]
    /// and [`request`].
    ///
    /// [`requests`]: Journal::requests
    /// [`request`]: Journal::request
    pub fn keep_last(&self, n: usize) {
        let mut e = self.lock();
        e.limit = Some(n.max(1));
        e.trim();
    }

    /// A snapshot of the requests kept (all of them unless
    /// [`Journal::keep_last`] was called), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().kept.iter().map(|e| e.rec.clone()).collect()
    }

    /// The arrival index of the first request [`Journal::requests`] returns.
    pub fn first_kept(&self) -> usize {
        self.lock().first
    }

    /// A snapshot of request `i`, if it has arrived and is kept.
    pub fn request(&self, i: usize) -> Option<RecordedRequest> {
        self.lock().get(i).map(|e| e.rec.clone())
    }

    /// Requests seen so far, whether kept or not.
    pub fn request_count(&self) -> usize {
        self.lock().len()
    }

    /// Waits (on tokio's clock, so it works when paused) until `n` requests
    /// have been seen; `false` after `timeout`.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |e| (e.len() >= n).then_some(()))
            .await
            .is_some()
    }

    /// Waits until the client closes the connection that carried request
    /// `i` (mid-reply or later) and returns when that was seen. `None` on
    /// timeout, or at once if the mock closed that connection itself.
    pub async fn wait_closed(&self, i: usize, timeout: Duration) -> Option<Instant> {
        self.wait_until(timeout, |e| {
            let e = e.get(i)?;
            match e.rec.connection_closed_at {
                Some(t) => Some(Some(t)),
                None => e.conn_done.then_some(None),
            }
        })
        .await
        .flatten()
    }

    /// Waits until the mock finished or abandoned request `i`'s reply
    /// (completed, client closed, or mock disconnected) and returns its
    /// record; `None` on timeout.
    pub async fn wait_reply_done(&self, i: usize, timeout: Duration) -> Option<RecordedRequest> {
        self.wait_until(timeout, |e| {
            let e = e.get(i)?;
            let done =
                e.rec.completed_at.is_some() || e.rec.client_closed_at.is_some() || e.conn_done;
            done.then(|| e.rec.clone())
        })
        .await
    }

    async fn wait_until<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Entries) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&self.lock()) {
                return Some(v);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return check(&self.lock());
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn changed(&self) {
        self.inner.changed.notify_waiters();
    }

    pub(crate) fn push(&self, rec: RecordedRequest) -> usize {
        let i = {
            let mut e = self.lock();
            e.kept.push_back(Entry {
                rec,
                conn_done: false,
            });
            e.trim();
            e.len() - 1
        };
        self.changed();
        i
    }

    pub(crate) fn update(&self, i: usize, f: impl FnOnce(&mut RecordedRequest)) {
        if let Some(e) = self.lock().get_mut(i) {
            f(&mut e.rec);
        }
        self.changed();
    }

    /// The connection carrying `reqs` is gone. `client_closed_at` is the
    /// time the client closed it, `None` if the mock closed it.
    pub(crate) fn connection_done(&self, reqs: &[usize], client_closed_at: Option<Instant>) {
        {
            let mut entries = self.lock();
            for &i in reqs {
                let Some(e) = entries.get_mut(i) else {
                    continue;
                };
                e.conn_done = true;
                if let Some(t) = client_closed_at {
                    e.rec.connection_closed_at.get_or_insert(t);
                    if e.rec.completed_at.is_none() {
                        e.rec.client_closed_at.get_or_insert(t);
                    }
                }
            }
        }
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> RecordedRequest {
        RecordedRequest {
            method: "POST".into(),
            path: path.into(),
            headers: Vec::new(),
            body: serde_json::Value::Null,
            raw_body: bytes::Bytes::new(),
            received_at: Instant::now(),
            events_sent: 0,
            bytes_sent: 0,
            headers_sent_at: None,
            last_event_at: None,
            client_closed_at: None,
            completed_at: None,
            connection_closed_at: None,
            connection: 0,
            slot: None,
        }
    }

    #[tokio::test]
    async fn a_limited_journal_keeps_the_last_requests_under_their_arrival_index() {
        let j = Journal::default();
        j.keep_last(3);
        for i in 0..10 {
            assert_eq!(j.push(rec(&format!("/{i}"))), i);
        }
        assert_eq!(j.request_count(), 10);
        assert_eq!(j.first_kept(), 7);
        let paths: Vec<_> = j.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/7", "/8", "/9"]);
        assert!(j.request(6).is_none());
        assert_eq!(j.request(8).unwrap().path, "/8");
        // Updates and closes of dropped requests are ignored.
        j.update(2, |r| r.events_sent = 5);
        j.connection_done(&[2, 9], None);
        assert!(
            j.wait_reply_done(9, Duration::from_millis(1))
                .await
                .is_some()
        );
        assert!(j.wait_for_requests(10, Duration::from_millis(1)).await);
    }
}
