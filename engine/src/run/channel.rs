//! The event channel between a request's task and its response body: one
//! sender, one receiver, bounded.
//!
//! tokio's mpsc channel allocates its slots in blocks of 32 and keeps two
//! blocks once a stream has sent more than 32 events: about 2.5 KB per open
//! stream for a channel that never holds more than 16 events of 32 bytes.
//! This one is a mutex around a queue that grows to the bound and no
//! further, and a waker per side.
//!
//! A slow client fills it, and then the request task waits in
//! [`EventSender::send`] instead of reading the upstream: the client's pace
//! is the upstream's pace, and nothing grows.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::events::Event;

/// A new channel holding at most `bound` events.
pub fn channel(bound: usize) -> (EventSender, EventReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            bound: bound.max(1),
            sender_gone: false,
            receiver_gone: false,
            receiver: None,
            space: None,
            closed: None,
        }),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        EventReceiver { shared },
    )
}

struct Shared {
    state: Mutex<State>,
}

struct State {
    queue: VecDeque<Event>,
    bound: usize,
    sender_gone: bool,
    receiver_gone: bool,
    /// The receiver, waiting for an event or the end.
    receiver: Option<Waker>,
    /// The sender, waiting for room.
    space: Option<Waker>,
    /// The sender, waiting for the receiver to go away.
    closed: Option<Waker>,
}

impl Shared {
    /// A poisoned lock only means a panic elsewhere while it was held; the
    /// queue and flags are always consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Replaces a stored waker unless it already wakes the same task.
fn store(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The request task's end.
pub struct EventSender {
    shared: Arc<Shared>,
}

impl EventSender {
    /// Queues `ev`, waiting while the channel is full. `Err` gives the
    /// event back when the receiver is gone (the client left).
    pub async fn send(&self, ev: Event) -> Result<(), Event> {
        let mut ev = Some(ev);
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            // `ev` is only taken when this resolves.
            if s.receiver_gone {
                return Poll::Ready(ev.take().map_or(Ok(()), Err));
            }
            if s.queue.len() >= s.bound {
                store(&mut s.space, cx);
                return Poll::Pending;
            }
            s.queue.extend(ev.take());
            let wake = s.receiver.take();
            drop(s);
            if let Some(w) = wake {
                w.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// Resolves once the receiver is gone.
    pub async fn closed(&self) {
        poll_fn(|cx| {
            let mut s = self.shared.lock();
            if s.receiver_gone {
                return Poll::Ready(());
            }
            store(&mut s.closed, cx);
            Poll::Pending
        })
        .await
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.sender_gone = true;
        let wake = s.receiver.take();
        drop(s);
        if let Some(w) = wake {
            w.wake();
        }
    }
}

/// The response body's end.
pub struct EventReceiver {
    shared: Arc<Shared>,
}

impl EventReceiver {
    /// The next event; `None` once the sender is gone and every event it
    /// sent was received.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut s = self.shared.lock();
        if let Some(ev) = s.queue.pop_front() {
            let wake = s.space.take();
            drop(s);
            if let Some(w) = wake {
                w.wake();
            }
            return Poll::Ready(Some(ev));
        }
        if s.sender_gone {
            return Poll::Ready(None);
        }
        store(&mut s.receiver, cx);
        Poll::Pending
    }

    pub async fn recv(&mut self) -> Option<Event> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventReceiver")
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.receiver_gone = true;
        // Events nobody will read: dropped now, not with the sender.
        let queued = std::mem::take(&mut s.queue);
        let wakes = [s.space.take(), s.closed.take()];
        drop(s);
        drop(queued);
        for w in wakes.into_iter().flatten() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn delta(i: usize) -> Event {
        Event::Delta(i.to_string())
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_end_when_the_sender_goes() {
        let (tx, mut rx) = channel(4);
        for i in 0..3 {
            tx.send(delta(i)).await.unwrap();
        }
        drop(tx);
        for i in 0..3 {
            assert_eq!(rx.recv().await, Some(delta(i)));
        }
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_channel_holds_the_sender_until_an_event_is_taken() {
        let (tx, mut rx) = channel(2);
        tx.send(delta(0)).await.unwrap();
        tx.send(delta(1)).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(5), tx.send(delta(2))).await;
        assert!(third.is_err(), "a full channel took a third event");
        let sender = tokio::spawn(async move {
            tx.send(delta(2)).await.unwrap();
            tx
        });
        tokio::task::yield_now().await;
        assert!(!sender.is_finished());
        assert_eq!(rx.recv().await, Some(delta(0)));
        let tx = sender.await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(delta(1)));
        assert_eq!(rx.recv().await, Some(delta(2)));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn the_sender_learns_when_the_receiver_is_gone() {
        let (tx, rx) = channel(1);
        tx.send(delta(0)).await.unwrap();
        // Waiting for room, and for the close, in other tasks.
        let tx = Arc::new(tx);
        let (t1, t2) = (tx.clone(), tx.clone());
        let blocked = tokio::spawn(async move { t1.send(delta(1)).await });
        let closed = tokio::spawn(async move { t2.closed().await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(blocked.await.unwrap(), Err(delta(1)));
        closed.await.unwrap();
        assert_eq!(tx.send(delta(2)).await, Err(delta(2)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_event_or_wake_up_is_lost_across_threads() {
        for _ in 0..20 {
            let (tx, mut rx) = channel(3);
            let n = 5_000;
            let sender = tokio::spawn(async move {
                for i in 0..n {
                    tx.send(delta(i)).await.unwrap();
                }
            });
            for i in 0..n {
                assert_eq!(rx.recv().await, Some(delta(i)));
            }
            assert_eq!(rx.recv().await, None);
            sender.await.unwrap();
        }
    }
}
