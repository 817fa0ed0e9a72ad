//! [`Gate`]: holds a reply at a point until the test lets it go on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A one-way gate shared by a test and the replies that wait at it
/// ([`Fault::HoldAfter`](crate::Fault::HoldAfter)): closed when made,
/// open for good once [`Gate::open`] is called. Clones are the same gate;
/// two gates are equal only when they are clones of one another.
#[derive(Clone, Default)]
pub struct Gate(Arc<Inner>);

#[derive(Default)]
struct Inner {
    open: AtomicBool,
    opened: Notify,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: every reply waiting at it goes on, and later ones
    /// pass without waiting.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::SeqCst);
        self.0.opened.notify_waiters();
    }

    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::SeqCst)
    }

    /// Waits until the gate is open.
    pub async fn wait(&self) {
        loop {
            let opened = self.0.opened.notified();
            tokio::pin!(opened);
            // Registered before the check, so an `open` in between is
            // not missed.
            opened.as_mut().enable();
            if self.is_open() {
                return;
            }
            opened.await;
        }
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Gate {}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_open() { "open" } else { "closed" };
        write!(f, "Gate({state})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_when_the_gate_opens_and_not_before() {
        let gate = Gate::new();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gate.open();
        waiting.await.unwrap();
        // Open for good.
        gate.wait().await;
        assert_eq!(gate, gate.clone());
        assert_ne!(gate, Gate::new());
    }
}
