//! The SQLite ledger's writer thread (see `sqlite.rs`): it owns the one
//! connection, takes every operation waiting (up to [`MAX_BATCH`]), runs
//! them in one `BEGIN IMMEDIATE` transaction, each in its own savepoint,
//! commits once, then answers each caller; and it keeps the WAL bounded
//! and asks for checkpoints.

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::sqlite_file::{Checkpointer, WalBound};

/// Most operations in one transaction: bounds how long the first of them
/// waits for the commit.
pub(super) const MAX_BATCH: usize = 256;

/// The writer asks for a checkpoint after this many transactions.
const CHECKPOINT_EVERY: u32 = 64;

/// What an operation did with its savepoint.
pub(super) enum Done<T> {
    /// Keep its writes.
    Keep(T),
    /// Roll its writes back (the answer still goes to the caller).
    Undo(T),
}

/// Runs one operation on the connection (or, given why it cannot run, does
/// not); returns whether to keep its writes, and what answers the caller
/// once the commit is known (`Some` error message when it failed).
pub(super) type Work = Box<dyn FnOnce(Result<&Connection, &str>) -> (bool, Finish) + Send>;
pub(super) type Finish = Box<dyn FnOnce(Option<&str>) + Send>;

pub(super) enum Msg {
    Work(Work),
    /// Finish what was sent before, close the connection, then answer.
    Close(oneshot::Sender<()>),
}

/// The writer thread: batches, commits, answers.
pub(super) fn writer(
    conn: Connection,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    checkpointer: Option<Checkpointer>,
    mut wal: Option<WalBound>,
    on_batch: impl Fn(),
) {
    let mut since_checkpoint = 0;
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.blocking_recv() else {
            break;
        };
        let mut batch = Vec::new();
        match first {
            Msg::Work(w) => batch.push(w),
            Msg::Close(done) => closing = Some(done),
        }
        while closing.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Work(w)) => batch.push(w),
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&conn, batch);
            on_batch();
            let checkpointing = checkpointer.as_ref().map(|c| &*c.running);
            let over = wal
                .as_mut()
                .is_some_and(|w| w.after_batch(&conn, checkpointing));
            since_checkpoint += 1;
            if since_checkpoint >= CHECKPOINT_EVERY
                && !over
                && let Some(c) = &checkpointer
            {
                // Full: one is asked for already.
                let _ = c.ask.try_send(());
                since_checkpoint = 0;
            }
        }
    }
    if let Some(c) = checkpointer {
        drop(c.ask);
        let _ = c.thread.join();
    }
    // The last connection to close checkpoints what is left.
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

fn run_batch(conn: &Connection, batch: Vec<Work>) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = e.to_string();
        for work in batch {
            let (_, finish) = work(Err(&msg));
            finish(Some(&msg));
        }
        return;
    }
    let mut finishers = Vec::with_capacity(batch.len());
    for work in batch {
        let finish = match conn.execute_batch("SAVEPOINT op") {
            Ok(()) => {
                let (keep, finish) = work(Ok(conn));
                if !keep {
                    let _ = conn.execute_batch("ROLLBACK TO op");
                }
                let _ = conn.execute_batch("RELEASE op");
                finish
            }
            Err(e) => work(Err(&e.to_string())).1,
        };
        finishers.push(finish);
    }
    let commit = conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        e.to_string()
    });
    for finish in finishers {
        finish(commit.as_ref().err().map(String::as_str));
    }
}
