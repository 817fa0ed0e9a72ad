//! A tool database: creation from a seed, a small pool of connections,
//! inspection of a query at compile time, and running a query into JSON rows.
//!
//! Everything in this file blocks; `exec` calls it inside `spawn_blocking`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Batch, Connection, OpenFlags};
use serde_json::{Map, Value};

use super::authorizer::{self, Gate, Refusal};

/// Connections kept per database. Tool queries are short; four cover the
/// concurrency of a small server without holding many file handles.
const POOL_SIZE: usize = 4;

/// A declared database, opened and checked.
pub struct Database {
    name: String,
    path: PathBuf,
    read_only: bool,
    pool: Mutex<Vec<Pooled>>,
    /// Statements started on this database. Tests use it to prove that
    /// rejected arguments never reach SQLite.
    executions: AtomicU64,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// A pooled connection and the identity of the file it opened, so that a
/// file replaced on disk (or deleted) is noticed instead of serving the old
/// inode forever.
struct Pooled {
    conn: ToolConnection,
    file: Option<FileId>,
}

/// A connection with the tool authorizer installed (see `authorizer`), and
/// what that authorizer tells its owner. Every connection of a [`Database`]
/// is one of these, so no tool SQL ever prepares without the policy.
pub(crate) struct ToolConnection {
    conn: Connection,
    gate: Arc<Gate>,
}

impl std::ops::Deref for ToolConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl ToolConnection {
    /// Puts `conn` under the tool policy. `writable`: the database was
    /// declared `read_only: false`.
    pub(crate) fn guard(conn: Connection, writable: bool) -> rusqlite::Result<ToolConnection> {
        // Defensive mode refuses the features that can corrupt a database
        // file (writable_schema and the like); an untrusted schema keeps a
        // hostile file's views and triggers from calling functions with
        // side effects.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        let gate = authorizer::install(&conn, writable);
        Ok(ToolConnection { conn, gate })
    }

    /// What the authorizer refused since the last call, if anything.
    pub(crate) fn take_refusal(&self) -> Option<Refusal> {
        self.gate.take_refusal()
    }

    /// Whether the connection holds no state a statement could have left:
    /// no open transaction, no attached database, no `temp` schema object.
    /// The authorizer refuses every statement that could leave one; this is
    /// the second lock on the same door, checked before each reuse.
    fn is_clean(&self) -> bool {
        if !self.conn.is_autocommit() || self.conn.db_name(2).is_ok() {
            return false;
        }
        self.gate.trusted(|| {
            self.conn
                .prepare_cached("SELECT count(*) FROM temp.sqlite_schema")
                .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
                .is_ok_and(|n| n == 0)
        })
    }

    /// Runs `f` with the authorizer allowing everything: for tests that
    /// need to dirty a connection on purpose.
    #[cfg(test)]
    pub(crate) fn trusted<R>(&self, f: impl FnOnce(&Connection) -> R) -> R {
        self.gate.trusted(|| f(&self.conn))
    }
}

type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn file_id(_meta: &std::fs::Metadata) -> Option<FileId> {
    None
}

impl Database {
    /// Opens the database file at `path` (which must exist) and checks that
    /// it is an SQLite database.
    pub(crate) fn open(name: &str, path: &Path, read_only: bool) -> Result<Database, String> {
        let db = Database {
            name: name.to_string(),
            path: path.to_path_buf(),
            read_only,
            pool: Mutex::new(Vec::new()),
            executions: AtomicU64::new(0),
        };
        // Opening is lazy in SQLite: read the schema once so that a file
        // that is not a database fails here, at compile time.
        let pooled = db.checkout()?;
        pooled
            .conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| sqlite_message(&e))?;
        db.checkin(pooled);
        Ok(db)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// How many statements have been started on this database.
    pub fn executions(&self) -> u64 {
        self.executions.load(Ordering::Relaxed)
    }

    /// A connection from the pool, or a new one. Fails when the file is
    /// gone: a database deleted at run time is an error, not stale data.
    fn checkout(&self) -> Result<Pooled, String> {
        let meta = std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => "database file is missing".to_string(),
            _ => format!("cannot read database file: {e}"),
        })?;
        let file = file_id(&meta);
        {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(pooled) = pool.pop() {
                if pooled.file == file {
                    return Ok(pooled);
                }
            }
        }
        let conn = self.connect().map_err(|e| sqlite_message(&e))?;
        Ok(Pooled { conn, file })
    }

    fn checkin(&self, pooled: Pooled) {
        if !pooled.conn.is_clean() {
            // Closed here rather than reused: the next call gets a fresh one.
            tracing::warn!(
                database = %self.name,
                "a tool connection was left with state; closed instead of reused"
            );
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(pooled);
        }
    }

    fn connect(&self) -> rusqlite::Result<ToolConnection> {
        // No SQLITE_OPEN_URI: the path is a file name, never a `file:` URI
        // with options. No SQLITE_OPEN_CREATE: a missing file is an error.
        let access = if self.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let conn =
            Connection::open_with_flags(&self.path, access | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        if self.read_only {
            // Belt and braces: even a statement that slipped past the
            // compile-time check cannot write through this connection.
            conn.pragma_update(None, "query_only", true)?;
        }
        ToolConnection::guard(conn, !self.read_only)
    }

    /// Runs `f` with a pooled connection and returns the connection to the
    /// pool afterwards.
    pub(crate) fn with_connection<R>(
        &self,
        f: impl FnOnce(&ToolConnection) -> R,
    ) -> Result<R, String> {
        let pooled = self.checkout()?;
        let result = f(&pooled.conn);
        self.checkin(pooled);
        Ok(result)
    }

    /// Connections waiting in the pool.
    #[cfg(test)]
    pub(crate) fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub(crate) fn count_execution(&self) {
        self.executions.fetch_add(1, Ordering::Relaxed);
    }
}

/// Builds a database file at `path` from the SQL text `seed`. The database
/// is built beside it under a temporary name and renamed into place, so a
/// seed that fails (or a crash) never leaves a half-built database behind.
pub(crate) fn create_from_seed(path: &Path, seed: &str) -> Result<(), String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    // Unique per attempt: two seeders (threads or processes) never share a
    // half-built file; the last rename wins with an identical database.
    tmp_name.push(format!(
        ".seeding-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let built = Connection::open(&tmp).and_then(|conn| {
        conn.execute_batch(seed)?;
        conn.close().map_err(|(_, e)| e)
    });
    if let Err(e) = built {
        let _ = std::fs::remove_file(&tmp);
        return Err(sqlite_message(&e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot move the new database into place: {e}")
    })
}

/// What compile needs to know about a query.
#[derive(Debug)]
pub(crate) struct QueryShape {
    /// Named parameters: 1-based index and name with its prefix (`:id`).
    pub params: Vec<(usize, String)>,
    /// The first positional parameter (`?`, `?2`), if any.
    pub positional: Option<String>,
    pub readonly: bool,
    pub columns: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InspectError {
    Empty,
    MultipleStatements,
    /// The authorizer refused an action of the statement.
    Refused(Refusal),
    Sqlite(String),
}

/// Prepares `sql` on `conn` without running it.
///
/// Exactly one statement is allowed. The text is walked as SQLite's own
/// parser walks it (`Batch` prepares one statement and advances past it):
/// the first statement must prepare, and what follows it must contain no
/// further statement. Trailing whitespace, `;` and comments are fine;
/// `SELECT 1; SELECT 2` is not, even when the second one would fail to
/// prepare on its own.
pub(crate) fn inspect(conn: &ToolConnection, sql: &str) -> Result<QueryShape, InspectError> {
    conn.take_refusal();
    let mut batch = Batch::new(conn, sql);
    let first = conn.gate.inspecting(|| batch.next());
    let stmt = match first {
        Ok(Some(stmt)) => stmt,
        Ok(None) => return Err(InspectError::Empty),
        Err(e) => {
            return Err(match refusal_of(conn) {
                // A noted write did not fail the statement; SQLite did.
                Some(refusal) if refusal != Refusal::WriteReadOnly => {
                    InspectError::Refused(refusal)
                }
                _ => InspectError::Sqlite(sqlite_message(&e)),
            });
        }
    };
    // A write on a read-only database was noted and allowed (see
    // `Gate::inspecting`); `readonly` below reports it.
    let noted = conn.take_refusal();
    debug_assert!(matches!(noted, None | Some(Refusal::WriteReadOnly)));
    // A second statement is not allowed whether or not it is authorized:
    // its refusal (if any) is not the one to report.
    let more = batch.next();
    conn.take_refusal();
    if !matches!(more, Ok(None)) {
        return Err(InspectError::MultipleStatements);
    }
    let mut params = Vec::new();
    let mut positional: Option<String> = None;
    for index in 1..=stmt.parameter_count() {
        match stmt.parameter_name(index) {
            Some(name) if !name.starts_with('?') => params.push((index, name.to_string())),
            // `?NNN` is named after its number; a bare `?` (or a slot that a
            // `?NNN` skipped over) has no name. Name the written one.
            Some(name) if positional.as_deref().is_none_or(|p| p == "?") => {
                positional = Some(name.to_string());
            }
            Some(_) => {}
            None => {
                positional.get_or_insert_with(|| "?".to_string());
            }
        }
    }
    Ok(QueryShape {
        params,
        positional,
        readonly: stmt.readonly(),
        columns: stmt.column_names().into_iter().map(String::from).collect(),
    })
}

/// Row and byte caps of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// How long to wait for a lock held by another connection.
    pub busy_timeout: Duration,
}

/// The rows of one call, already capped.
#[derive(Debug)]
pub(crate) struct Rows {
    pub rows: Vec<Value>,
    pub truncated: bool,
}

/// Why a query did not run to its rows.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The authorizer refused an action of the statement.
    Refused(Refusal),
    Sqlite(rusqlite::Error),
}

/// The authorizer's reason for a failed statement, if it refused something
/// since the last `take_refusal`. SQLite reports a refusal as `SQLITE_AUTH`
/// for most actions but as a plain error for functions, so the code does
/// not tell; a refusal always fails the statement, so its presence does.
fn refusal_of(conn: &ToolConnection) -> Option<Refusal> {
    conn.take_refusal()
}

/// Runs `sql` with `bindings` on `conn` and converts the rows, stopping at
/// `caps.max_rows` rows or when the next row would take the serialized
/// array past `caps.max_bytes`. The statement is prepared (or re-prepared)
/// under the authorizer, whatever compile checked before.
pub(crate) fn run(
    db: &Database,
    conn: &ToolConnection,
    sql: &str,
    bindings: &[(usize, SqlValue)],
    caps: Caps,
) -> Result<Rows, RunError> {
    conn.take_refusal();
    // SQLite may re-prepare a cached statement at its first step (after a
    // schema change), which asks the authorizer again: a refusal can come
    // from any step, not only from `prepare`.
    run_rows(db, conn, sql, bindings, caps).map_err(|e| match refusal_of(conn) {
        Some(refusal) => RunError::Refused(refusal),
        None => RunError::Sqlite(e),
    })
}

fn run_rows(
    db: &Database,
    conn: &Connection,
    sql: &str,
    bindings: &[(usize, SqlValue)],
    caps: Caps,
) -> rusqlite::Result<Rows> {
    conn.busy_timeout(caps.busy_timeout)?;
    let mut stmt = conn.prepare_cached(sql)?;
    for (index, value) in bindings {
        stmt.raw_bind_parameter(*index, value)?;
    }
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    db.count_execution();
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    // `[` and `]` of the array; each row adds its length and a comma.
    let mut bytes = 2usize;
    let mut truncated = false;
    while let Some(row) = rows.next()? {
        if out.len() >= caps.max_rows {
            truncated = true;
            break;
        }
        let mut object = Map::new();
        for (i, name) in columns.iter().enumerate() {
            object.insert(name.clone(), to_json(row.get_ref(i)?));
        }
        let object = Value::Object(object);
        let size = json_len(&object) + usize::from(!out.is_empty());
        if bytes + size > caps.max_bytes {
            truncated = true;
            break;
        }
        bytes += size;
        out.push(object);
    }
    Ok(Rows {
        rows: out,
        truncated,
    })
}

/// One SQLite value as JSON. BLOBs become lowercase hex: JSON has no bytes,
/// and hex needs no decoder to read.
pub(crate) fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        // SQLite stores NaN as NULL, but an overflow gives infinity, which
        // JSON cannot write: say it in words.
        ValueRef::Real(x) => serde_json::Number::from_f64(x)
            .map_or_else(|| Value::String(x.to_string()), Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(hex(b)),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Length of `v` serialized as compact JSON, without allocating it.
pub(crate) fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, v);
    count.0
}

/// SQLite's own message for an error, without rusqlite's wrapping.
pub(crate) fn sqlite_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(msg)) if !msg.is_empty() => msg.clone(),
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// Whether `e` is SQLite reporting that the statement was interrupted.
pub(crate) fn is_interrupt(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted)
}

#[cfg(test)]
#[path = "database_tests.rs"]
mod tests;
