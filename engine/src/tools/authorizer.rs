//! The SQLite authorizer every tool connection carries.
//!
//! SQLite asks the authorizer about each action of a statement while it
//! prepares it (and again whenever it re-prepares it). Sluice answers from
//! one policy, at compile time (`sluice check` prepares every query on a
//! pooled connection) and at run time alike, because both go through the
//! same connections:
//!
//! - reading tables of the `main` database (the declared file) is allowed;
//!   `temp` and attached databases are not;
//! - writing rows (INSERT, UPDATE, DELETE) is allowed on `main` only, and
//!   only when the database is declared `read_only: false`;
//! - ATTACH, DETACH, every PRAGMA (also its table-valued functions such as
//!   `pragma_table_info`; a tool's job is its data, and even a pragma that
//!   only reads is one name away from one that sets), every schema change (CREATE,
//!   DROP, ALTER, REINDEX, ANALYZE, virtual tables, all TEMP objects) and
//!   transaction control (BEGIN, COMMIT, SAVEPOINT...) are refused;
//! - functions are allowed except `load_extension` (extension loading is
//!   also off in SQLite by default, and nothing in Sluice turns it on) and
//!   `fts3_tokenizer` (whose two-argument form registers a tokenizer from a
//!   pointer).
//!
//! Why this is enough to keep a pooled connection clean between calls: the
//! state a statement can leave on a connection is an attached database, a
//! `temp` schema object, a pragma setting or an open transaction, and each
//! needs an action refused above. `Database::checkin` verifies the first and
//! the last anyway before a connection goes back to the pool.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// INSERT, UPDATE or DELETE on a database opened read-only.
    WriteReadOnly,
    Attach,
    Detach,
    Pragma(String),
    Function(String),
    /// CREATE, DROP, ALTER and the like: what was tried, such as
    /// `CREATE TEMP TABLE x`.
    Schema(String),
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE.
    Transaction,
    /// Reading or writing a database other than `main`.
    OtherDatabase(String),
    /// An action this SQLite version names and Sluice does not know.
    Unknown(i32),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::WriteReadOnly => f.write_str("a write on a read-only database"),
            Refusal::Attach => f.write_str("ATTACH"),
            Refusal::Detach => f.write_str("DETACH"),
            Refusal::Pragma(name) => write!(f, "PRAGMA {name}"),
            Refusal::Function(name) => write!(f, "function {name}()"),
            Refusal::Schema(what) => write!(f, "a schema change ({what})"),
            Refusal::Transaction => f.write_str("transaction control"),
            Refusal::OtherDatabase(name) => write!(f, "database \"{name}\""),
            Refusal::Unknown(code) => write!(f, "SQLite action {code}"),
        }
    }
}

/// What the authorizer of one connection shares with its owner.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// The first refusal since the last [`Gate::take_refusal`]: SQLite only
    /// says "not authorized", this says what.
    refusal: Mutex<Option<Refusal>>,
    /// Sluice's own statements (the clean-connection check) run with this
    /// set; tool SQL never does.
    trusted: AtomicBool,
    /// Set while `sluice check` only prepares a query: a row write on a
    /// read-only database is noted but allowed, so that the rest of the
    /// query (its parameters, its columns) is still checked and every
    /// problem reported at once. Nothing else is relaxed: some PRAGMAs act
    /// while they are prepared, and a prepared write is never run.
    inspecting: AtomicBool,
}

impl Gate {
    pub(crate) fn take_refusal(&self) -> Option<Refusal> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Runs `f` with every action allowed: only for statements written in
    /// Sluice's code, never for a tool's query.
    pub(crate) fn trusted<R>(&self, f: impl FnOnce() -> R) -> R {
        with_flag(&self.trusted, f)
    }

    /// Runs `f`, which prepares a tool's query without running it, with
    /// row writes on a read-only database noted rather than refused.
    pub(crate) fn inspecting<R>(&self, f: impl FnOnce() -> R) -> R {
        with_flag(&self.inspecting, f)
    }
}

/// Runs `f` with `flag` set, and clears it however `f` ends.
fn with_flag<R>(flag: &AtomicBool, f: impl FnOnce() -> R) -> R {
    struct Reset<'a>(&'a AtomicBool);
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    flag.store(true, Ordering::SeqCst);
    let _reset = Reset(flag);
    f()
}

/// Installs the policy on `conn`. `writable`: the database was declared
/// `read_only: false`.
pub(crate) fn install(conn: &Connection, writable: bool) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    let shared = gate.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        if shared.trusted.load(Ordering::SeqCst) {
            return Authorization::Allow;
        }
        match decide(&ctx, writable) {
            Ok(()) => Authorization::Allow,
            Err(refusal) => {
                let noted_only =
                    refusal == Refusal::WriteReadOnly && shared.inspecting.load(Ordering::SeqCst);
                let mut slot = shared.refusal.lock().unwrap_or_else(|p| p.into_inner());
                if noted_only {
                    slot.get_or_insert(refusal);
                    return Authorization::Allow;
                }
                // The refusal that fails the statement is the one to tell,
                // not a write noted before it.
                if slot.is_none() || *slot == Some(Refusal::WriteReadOnly) {
                    *slot = Some(refusal);
                }
                Authorization::Deny
            }
        }
    }));
    gate
}

/// The policy: `Ok` allows the action.
pub(crate) fn decide(ctx: &AuthContext<'_>, writable: bool) -> Result<(), Refusal> {
    let on_main = || match ctx.database_name {
        Some("main") => Ok(()),
        Some(other) => Err(Refusal::OtherDatabase(other.to_string())),
        // SQLite names the database of every read and write; an action
        // without one is not one to guess about.
        None => Err(Refusal::OtherDatabase(String::new())),
    };
    match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Ok(()),
        // A table read for no column (`count(*)`) comes without a database
        // name. It can only be a table of `main`: no other database can be
        // attached or created under this policy.
        AuthAction::Read {
            column_name: "", ..
        } if ctx.database_name.is_none() => Ok(()),
        // A pragma's table-valued function (`pragma_table_info(...)`)
        // prepares its PRAGMA only when it runs: refused there too, but
        // refused here so that `sluice check` says so. (A table of one's own
        // named `pragma_...` is refused with it; SQLite reserves the prefix
        // for these functions in practice.)
        AuthAction::Read { table_name, .. }
            if table_name.len() > 7 && table_name[..7].eq_ignore_ascii_case("pragma_") =>
        {
            Err(Refusal::Pragma(table_name[7..].to_ascii_lowercase()))
        }
        AuthAction::Read { .. } => on_main(),
        // CREATE and DROP write the schema table before (CREATE) or after
        // (DROP) SQLite asks about the object itself; refuse either way.
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if is_schema_table(table_name) =>
        {
            Err(Refusal::Schema(format!(
                "CREATE or DROP in \"{}\"",
                ctx.database_name.unwrap_or("main")
            )))
        }
        AuthAction::Insert { .. } | AuthAction::Update { .. } | AuthAction::Delete { .. } => {
            on_main()?;
            if writable {
                Ok(())
            } else {
                Err(Refusal::WriteReadOnly)
            }
        }
        AuthAction::Function { function_name } => {
            if ["load_extension", "fts3_tokenizer"]
                .iter()
                .any(|f| function_name.eq_ignore_ascii_case(f))
            {
                Err(Refusal::Function(function_name.to_ascii_lowercase()))
            } else {
                Ok(())
            }
        }
        AuthAction::Attach { .. } => Err(Refusal::Attach),
        AuthAction::Detach { .. } => Err(Refusal::Detach),
        AuthAction::Pragma { pragma_name, .. } => {
            Err(Refusal::Pragma(pragma_name.to_ascii_lowercase()))
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(Refusal::Transaction),
        AuthAction::Unknown { code, .. } => Err(Refusal::Unknown(code)),
        other => Err(Refusal::Schema(schema_change(&other))),
    }
}

/// Whether `table` is SQLite's table of schema objects, under any of its
/// names.
fn is_schema_table(table: &str) -> bool {
    [
        "sqlite_master",
        "sqlite_schema",
        "sqlite_temp_master",
        "sqlite_temp_schema",
    ]
    .iter()
    .any(|t| table.eq_ignore_ascii_case(t))
}

/// A short description of a schema change, such as `CREATE TEMP TABLE x`.
fn schema_change(action: &AuthAction<'_>) -> String {
    match *action {
        AuthAction::CreateIndex { index_name: n, .. } => format!("CREATE INDEX {n}"),
        AuthAction::CreateTable { table_name: n } => format!("CREATE TABLE {n}"),
        AuthAction::CreateTempIndex { index_name: n, .. } => format!("CREATE TEMP INDEX {n}"),
        AuthAction::CreateTempTable { table_name: n } => format!("CREATE TEMP TABLE {n}"),
        AuthAction::CreateTempTrigger {
            trigger_name: n, ..
        } => {
            format!("CREATE TEMP TRIGGER {n}")
        }
        AuthAction::CreateTempView { view_name: n } => format!("CREATE TEMP VIEW {n}"),
        AuthAction::CreateTrigger {
            trigger_name: n, ..
        } => format!("CREATE TRIGGER {n}"),
        AuthAction::CreateView { view_name: n } => format!("CREATE VIEW {n}"),
        AuthAction::CreateVtable { table_name: n, .. } => format!("CREATE VIRTUAL TABLE {n}"),
        AuthAction::DropIndex { index_name: n, .. }
        | AuthAction::DropTempIndex { index_name: n, .. } => format!("DROP INDEX {n}"),
        AuthAction::DropTable { table_name: n }
        | AuthAction::DropTempTable { table_name: n }
        | AuthAction::DropVtable { table_name: n, .. } => format!("DROP TABLE {n}"),
        AuthAction::DropTrigger {
            trigger_name: n, ..
        }
        | AuthAction::DropTempTrigger {
            trigger_name: n, ..
        } => format!("DROP TRIGGER {n}"),
        AuthAction::DropView { view_name: n } | AuthAction::DropTempView { view_name: n } => {
            format!("DROP VIEW {n}")
        }
        AuthAction::AlterTable { table_name: n, .. } => format!("ALTER TABLE {n}"),
        AuthAction::Reindex { index_name: n } => format!("REINDEX {n}"),
        AuthAction::Analyze { table_name: n } => format!("ANALYZE {n}"),
        _ => "an unknown change".to_string(),
    }
}

#[cfg(test)]
#[path = "authorizer_tests.rs"]
mod tests;
