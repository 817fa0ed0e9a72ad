//! Running a query off the async runtime, under the tool's timeout.
//!
//! SQLite blocks, so the query runs in `spawn_blocking`. A blocking thread
//! cannot be cancelled from outside, but SQLite can: when the timeout fires,
//! the connection's interrupt handle stops the running statement at its next
//! step, and the blocking thread returns. Dropping the call (the request went
//! away) interrupts it the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, InterruptHandle};

use super::Tool;
use super::database::{self, Caps, Rows, RunError};

/// While the timed-out statement has not stopped, the interrupt is sent
/// again at this interval. SQLite ignores an interrupt sent just before a
/// statement starts (it clears the flag when the first statement begins), so
/// one interrupt could be lost to that race; a repeat cannot.
const INTERRUPT_RETRY: Duration = Duration::from_millis(10);

/// Shared between the call and its blocking thread: whether the call has
/// given up, and how to interrupt the connection while it is in use.
#[derive(Default)]
pub(super) struct Cancel {
    fired: AtomicBool,
    handle: Mutex<Option<InterruptHandle>>,
}

impl Cancel {
    /// Registers the connection about to run; false when the call has
    /// already given up (the query must not start).
    pub(super) fn arm(&self, conn: &Connection) -> bool {
        *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.get_interrupt_handle());
        !self.fired.load(Ordering::SeqCst)
    }

    /// Forgets the connection before it goes back to the pool, so that a
    /// late interrupt can never reach another call's statement.
    pub(super) fn disarm(&self) {
        *self.handle.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub(super) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        if let Some(h) = &*self.handle.lock().unwrap_or_else(|p| p.into_inner()) {
            h.interrupt();
        }
    }
}

/// Interrupts the query if the call is dropped before it finished.
struct FireOnDrop(Option<Arc<Cancel>>);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.fire();
        }
    }
}

/// Runs the tool's query with `bindings`. `Err` is the message for the model.
pub(crate) async fn run(tool: &Tool, bindings: Vec<(usize, SqlValue)>) -> Result<Rows, String> {
    let cancel = Arc::new(Cancel::default());
    let mut guard = FireOnDrop(Some(cancel.clone()));
    let db = tool.database.clone();
    let query = tool.query.clone();
    let caps = Caps {
        max_rows: tool.max_rows,
        max_bytes: tool.max_bytes,
        // A lock held elsewhere is waited for in SQLite's busy handler, which
        // an interrupt does not cut short; half the timeout leaves room to
        // report "database is locked" rather than a bare timeout.
        busy_timeout: tool.timeout / 2,
    };
    let task_cancel = cancel.clone();
    let mut task = tokio::task::spawn_blocking(move || {
        db.with_connection(|conn| {
            let result = task_cancel
                .arm(conn)
                .then(|| database::run(&db, conn, &query, &bindings, caps));
            task_cancel.disarm();
            result
        })
    });
    let joined = tokio::select! {
        joined = &mut task => joined,
        () = tokio::time::sleep(tool.timeout) => loop {
            cancel.fire();
            tokio::select! {
                joined = &mut task => break joined,
                () = tokio::time::sleep(INTERRUPT_RETRY) => {}
            }
        },
    };
    guard.0 = None;
    let timed_out = || {
        format!(
            "query timed out after {}",
            humantime::format_duration(tool.timeout)
        )
    };
    match joined {
        Ok(Ok(Some(Ok(rows)))) => Ok(rows),
        Ok(Ok(Some(Err(RunError::Sqlite(e))))) if database::is_interrupt(&e) => Err(timed_out()),
        Ok(Ok(Some(Err(RunError::Sqlite(e))))) => {
            Err(format!("query failed: {}", database::sqlite_message(&e)))
        }
        // Compile refuses these too; reaching here means the tool was built
        // some other way or the database changed under it.
        Ok(Ok(Some(Err(RunError::Refused(refusal))))) => Err(format!(
            "query refused: {refusal} is not allowed in a tool query"
        )),
        // The call gave up before the query started.
        Ok(Ok(None)) => Err(timed_out()),
        Ok(Err(msg)) => Err(format!(
            "database \"{}\" is unavailable: {msg}",
            tool.database.name()
        )),
        // The blocking thread panicked; say so without a panic here.
        Err(_) => Err("query failed: internal error".into()),
    }
}
