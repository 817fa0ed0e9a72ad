//! The SQLite ledger's file: opening it (WAL, synchronous `NORMAL`), its
//! schema versioned by `PRAGMA user_version`, and the two things that keep
//! its WAL bounded: the checkpointer thread and the writer's truncation
//! past [`WAL_LIMIT`].

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

use super::LedgerError;

/// How long a statement waits for another process's write lock (a second
/// `sluice serve` or a `sluice usage` on the same file).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Past this size the writer checkpoints the whole WAL and truncates it
/// (see [`WalBound`]); also the size a WAL is cut back to when it restarts.
pub(super) const WAL_LIMIT: u64 = 16 * 1024 * 1024;

/// How long that checkpoint waits for readers of old snapshots (a
/// `sluice usage`) or for a passive checkpoint in progress; when it cannot,
/// it is tried again once the WAL has grown by [`TRUNCATE_RETRY`].
const TRUNCATE_WAIT: Duration = Duration::from_millis(250);
const TRUNCATE_RETRY: u64 = WAL_LIMIT / 64;

/// The schema, in order; `PRAGMA user_version` says how many are applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_ledger.sql"),
    include_str!("../../migrations/sqlite/0002_request_id_and_usage_anomaly.sql"),
    include_str!("../../migrations/sqlite/0003_cache_tokens.sql"),
    include_str!("../../migrations/sqlite/0004_keys.sql"),
    include_str!("../../migrations/sqlite/0005_rate_limits.sql"),
    include_str!("../../migrations/sqlite/0006_cache_write_1h_tokens.sql"),
    include_str!("../../migrations/sqlite/0007_usage_days.sql"),
];

/// Where `sqlite:PATH`, `sqlite://PATH` or `sqlite::memory:` points
/// (`None`: in memory). A `?query` is ignored except `mode=memory`.
pub(super) fn parse_url(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let memory =
        path.is_empty() || path == ":memory:" || query.split('&').any(|kv| kv == "mode=memory");
    (!memory).then_some(path)
}

/// `url` with a relative SQLite file path taken as relative to `base` (the
/// settings file's folder) rather than to the working directory, so a
/// pipelines directory keeps its ledger wherever it is served from. Other
/// URLs (absolute paths, in memory, Postgres) come back unchanged; `None`
/// when `base` is not valid UTF-8, since a URL is text.
pub fn resolve_sqlite_url(url: &str, base: &Path) -> Option<String> {
    if !url.starts_with("sqlite:") {
        return Some(url.to_string());
    }
    let Some(path) = parse_url(url) else {
        return Some(url.to_string());
    };
    if Path::new(path).is_absolute() || base.as_os_str().is_empty() {
        return Some(url.to_string());
    }
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let joined = base.join(path);
    let joined = joined.to_str()?;
    Some(if query.is_empty() {
        format!("sqlite:{joined}")
    } else {
        format!("sqlite:{joined}?{query}")
    })
}

/// Opens the connection and brings the schema up to date; for a file,
/// starts its checkpointer.
pub(super) fn connect(url: &str) -> Result<(Connection, Option<Checkpointer>), LedgerError> {
    let conn = match parse_url(url) {
        None => Connection::open_in_memory()?,
        Some(path) => {
            if let Some(dir) = Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                let _ = std::fs::create_dir_all(dir);
            }
            let conn = Connection::open(path)?;
            // WAL: readers (reports) never block the writer. NORMAL: a
            // commit survives a crash of this process; only a power loss
            // may lose the last commits.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // The checkpointer thread checkpoints instead.
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            // A WAL that restarts after a checkpoint is cut back to this.
            conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
            conn
        }
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&conn)?;
    let checkpointer = parse_url(url).map(Checkpointer::start).transpose()?;
    Ok((conn, checkpointer))
}

/// Brings the schema up to date. A schema newer than this binary's is
/// refused: writing rows a newer Sluice would misread is worse than not
/// starting.
fn migrate(conn: &Connection) -> Result<(), LedgerError> {
    let stored: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let mut applied = stored;
    if stored == 0 {
        // Ledgers made before this store kept their version in sqlx's
        // table; the schema is the same.
        let sqlx_table: Option<String> = conn
            .query_row(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if sqlx_table.is_some() {
            applied = conn.query_row(
                "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success",
                [],
                |r| r.get(0),
            )?;
            conn.pragma_update(None, "user_version", applied)?;
        }
    }
    let known = MIGRATIONS.len() as i64;
    if applied > known {
        return Err(LedgerError::NewerSchema {
            found: applied,
            known,
        });
    }
    let applied = usize::try_from(applied).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

/// Checkpoints the WAL into the database file when the writer asks, on a
/// connection of its own. A checkpoint fsyncs; done by the writer (SQLite's
/// default, every 1,000 pages) it stalled one commit in about 80 for
/// milliseconds. `PASSIVE` never blocks the writer.
pub(super) struct Checkpointer {
    pub(super) ask: std::sync::mpsc::SyncSender<()>,
    pub(super) thread: std::thread::JoinHandle<()>,
    /// Held by the checkpointer while it checkpoints: the writer takes it
    /// to wait for a passive checkpoint to end before it truncates.
    pub(super) running: std::sync::Arc<std::sync::Mutex<()>>,
}

impl Checkpointer {
    fn start(path: &str) -> Result<Checkpointer, LedgerError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (ask, asked) = std::sync::mpsc::sync_channel::<()>(1);
        let running = std::sync::Arc::new(std::sync::Mutex::new(()));
        let held = running.clone();
        let thread = std::thread::Builder::new()
            .name("sluice-ledger-checkpoint".into())
            .spawn(move || {
                for () in asked {
                    let _running = held.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "ledger checkpoint failed");
                    }
                }
            })
            .map_err(|e| LedgerError::Sqlite(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            ask,
            thread,
            running,
        })
    }
}

/// Keeps the WAL bounded under a flood.
///
/// The checkpointer's `PASSIVE` checkpoints copy the WAL into the database
/// but cannot restart it while the writer keeps appending: the WAL only
/// starts over when a checkpoint has caught up with every frame, and under
/// a steady stream of commits (85,000 refused requests, one row each) it
/// never does, so the file grew without bound (478 MB). So when the WAL
/// passes [`WAL_LIMIT`] the writer itself, between two batches, runs a
/// `TRUNCATE` checkpoint: with no commit in between it catches up, and the
/// file is cut to zero. That costs one stall of the writer per
/// `WAL_LIMIT` of commits (copying 16 MB and an fsync), only under a load
/// the passive checkpoints cannot follow: back-pressure where it belongs.
/// Refused requests stay one row each (not aggregated into counters): each
/// is then found by its request id and counted by `sluice usage` like any
/// other, and the rows are small; it is the WAL, not the rows, that grew.
pub(super) struct WalBound {
    pub(super) path: std::path::PathBuf,
    /// The size past which to truncate next.
    pub(super) next_at: u64,
}

impl WalBound {
    /// Truncates the WAL if it is past its bound. Returns whether it still
    /// is: the writer then asks for no passive checkpoint, which would
    /// hold the checkpoint lock and make the next truncation fail too.
    ///
    /// A passive checkpoint already running is waited for (`checkpointing`,
    /// held by the checkpointer while it runs) rather than raced: under CPU
    /// contention one of 16 MB can take longer than any busy timeout, and
    /// the writer, committing on meanwhile, grew the WAL to 27 MB. Waiting
    /// stalls the writer only when it is past the bound: back-pressure.
    pub(super) fn after_batch(
        &mut self,
        conn: &Connection,
        checkpointing: Option<&std::sync::Mutex<()>>,
    ) -> bool {
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size <= self.next_at {
            return size > WAL_LIMIT;
        }
        let _idle = checkpointing.map(|m| m.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = conn.busy_timeout(TRUNCATE_WAIT);
        // (busy, frames in the WAL, frames checkpointed): busy means a
        // reader kept an old snapshot, or the checkpointer thread was in
        // the middle of a passive checkpoint, and the WAL was not restarted.
        let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        });
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        match done {
            Ok(0) => {
                self.next_at = WAL_LIMIT;
                return false;
            }
            Ok(_) => {
                self.next_at = size + TRUNCATE_RETRY;
                tracing::debug!(
                    wal_bytes = size,
                    "cannot truncate the ledger's WAL yet: a reader or a checkpoint holds it"
                );
            }
            Err(e) => {
                self.next_at = size + TRUNCATE_RETRY;
                tracing::warn!(error = %e, wal_bytes = size, "cannot truncate the ledger's WAL");
            }
        }
        true
    }
}
