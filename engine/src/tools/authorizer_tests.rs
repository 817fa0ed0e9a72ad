//! Tests of the tool authorizer, on real connections of a [`Database`]:
//! each refusal happens at run time too, with compile bypassed (the query
//! goes straight to `database::run`), and a connection left with state is
//! never reused.
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use serde_json::json;

use super::Refusal;
use crate::tools::database::{Caps, Database, RunError, create_from_seed, inspect, run};

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-auth-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SEED: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);
    INSERT INTO t (name) VALUES ('one'), ('two');";

fn database(dir: &TempDir, read_only: bool) -> Database {
    let path = dir.0.join("t.db");
    create_from_seed(&path, SEED).unwrap();
    Database::open("t", &path, read_only).unwrap()
}

fn caps() -> Caps {
    Caps {
        max_rows: 10,
        max_bytes: 10_000,
        busy_timeout: Duration::from_millis(100),
    }
}

/// Runs `sql` as a tool query would run, without compile's checks.
fn run_sql(db: &Database, sql: &str) -> Result<Vec<serde_json::Value>, RunError> {
    db.with_connection(|c| run(db, c, sql, &[], caps()))
        .unwrap()
        .map(|rows| rows.rows)
}

fn refusal(db: &Database, sql: &str) -> Refusal {
    match run_sql(db, sql) {
        Err(RunError::Refused(r)) => r,
        other => panic!("{sql}: expected a refusal, got {other:?}"),
    }
}

/// Schema changes are named by whichever of their actions SQLite asks
/// about first (the object, or the schema table it writes): only the kind
/// is compared. Every other refusal is compared whole.
fn assert_refused(db: &Database, sql: &str, expected: &Refusal) {
    let got = refusal(db, sql);
    match (expected, &got) {
        (Refusal::Schema(_), Refusal::Schema(_)) => {}
        _ => assert_eq!(&got, expected, "{sql}"),
    }
}

/// What every database refuses, read-only or not, and why.
fn always_refused(attached: &str) -> Vec<(String, Refusal)> {
    vec![
        (format!("ATTACH '{attached}' AS other"), Refusal::Attach),
        ("ATTACH ':memory:' AS other".into(), Refusal::Attach),
        ("DETACH main".into(), Refusal::Detach),
        (
            "PRAGMA query_only = 0".into(),
            Refusal::Pragma("query_only".into()),
        ),
        (
            "PRAGMA table_info(t)".into(),
            Refusal::Pragma("table_info".into()),
        ),
        (
            "SELECT load_extension('/tmp/evil.so')".into(),
            Refusal::Function("load_extension".into()),
        ),
        (
            "SELECT LOAD_EXTENSION('x', 'y')".into(),
            Refusal::Function("load_extension".into()),
        ),
        (
            "SELECT fts3_tokenizer('simple')".into(),
            Refusal::Function("fts3_tokenizer".into()),
        ),
        ("BEGIN".into(), Refusal::Transaction),
        ("SAVEPOINT s".into(), Refusal::Transaction),
        (
            "CREATE TEMP TABLE x (a)".into(),
            Refusal::Schema(String::new()),
        ),
        (
            "CREATE TEMP VIEW v AS SELECT 1".into(),
            Refusal::Schema(String::new()),
        ),
        (
            "CREATE TEMP TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END".into(),
            Refusal::Schema(String::new()),
        ),
        ("CREATE TABLE y (a)".into(), Refusal::Schema(String::new())),
        ("DROP TABLE t".into(), Refusal::Schema(String::new())),
        (
            "ALTER TABLE t ADD COLUMN z".into(),
            Refusal::Schema(String::new()),
        ),
        (
            "SELECT * FROM temp.sqlite_schema".into(),
            Refusal::OtherDatabase("temp".into()),
        ),
    ]
}

#[test]
fn a_read_only_database_refuses_everything_but_reads_at_run_time() {
    let dir = TempDir::new();
    let db = database(&dir, true);
    let attached = dir.0.join("other.db");
    let mut cases = always_refused(&attached.display().to_string());
    cases.push(("DELETE FROM t".into(), Refusal::WriteReadOnly));
    cases.push((
        "INSERT INTO t (name) VALUES ('x')".into(),
        Refusal::WriteReadOnly,
    ));
    cases.push(("UPDATE t SET name = 'x'".into(), Refusal::WriteReadOnly));
    for (sql, expected) in &cases {
        assert_refused(&db, sql, expected);
    }
    // ATTACH of a file that did not exist would have created it.
    assert!(!attached.exists());
    // Reads, recursion and ordinary functions still work.
    let rows = run_sql(
        &db,
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3)
         SELECT (SELECT count(*) FROM t) AS rows, sum(n) AS total, upper('a') AS a FROM c",
    )
    .unwrap();
    assert_eq!(rows, vec![json!({"rows": 2, "total": 6, "a": "A"})]);
}

#[test]
fn a_read_write_database_writes_rows_of_main_only() {
    let dir = TempDir::new();
    let db = database(&dir, false);
    let attached = dir.0.join("other.db");
    for (sql, expected) in &always_refused(&attached.display().to_string()) {
        assert_refused(&db, sql, expected);
    }
    // AUTOINCREMENT writes sqlite_sequence behind the statement's back;
    // that is SQLite's own bookkeeping, not an action to authorize.
    let rows = run_sql(
        &db,
        "INSERT INTO t (name) VALUES ('three') RETURNING id, name",
    )
    .unwrap();
    assert_eq!(rows, vec![json!({"id": 3, "name": "three"})]);
    run_sql(&db, "UPDATE t SET name = 'uno' WHERE id = 1").unwrap();
    run_sql(&db, "DELETE FROM t WHERE id = 2").unwrap();
    let rows = run_sql(&db, "SELECT name FROM t ORDER BY id").unwrap();
    assert_eq!(rows, vec![json!({"name": "uno"}), json!({"name": "three"})]);
}

#[test]
fn compile_inspection_reports_the_refusal() {
    let dir = TempDir::new();
    let db = database(&dir, true);
    let inspected = db
        .with_connection(|c| inspect(c, "ATTACH 'x.db' AS x"))
        .unwrap();
    assert_eq!(
        inspected.unwrap_err(),
        super::super::database::InspectError::Refused(Refusal::Attach)
    );
    // A write on a read-only database prepares, so that its parameters are
    // checked too; `readonly` says it writes (compile reports that).
    let shape = db
        .with_connection(|c| inspect(c, "DELETE FROM t WHERE id = :id"))
        .unwrap()
        .unwrap();
    assert!(!shape.readonly);
    assert_eq!(shape.params, vec![(1, ":id".to_string())]);
    // A refusal after a noted write is the one reported.
    let inspected = db
        .with_connection(|c| inspect(c, "INSERT INTO t (name) SELECT load_extension('x')"))
        .unwrap();
    assert_eq!(
        inspected.unwrap_err(),
        super::super::database::InspectError::Refused(Refusal::Function("load_extension".into()))
    );
    // The relaxation ended with the inspection: running the write is refused.
    assert_eq!(refusal(&db, "DELETE FROM t"), Refusal::WriteReadOnly);
    // A refused second statement is reported as a second statement.
    let inspected = db
        .with_connection(|c| inspect(c, "SELECT 1; PRAGMA query_only = 0"))
        .unwrap();
    assert_eq!(
        inspected.unwrap_err(),
        super::super::database::InspectError::MultipleStatements
    );
    // And the next inspection does not inherit the stale reason.
    let inspected = db
        .with_connection(|c| inspect(c, "SELECT nope FROM t"))
        .unwrap();
    assert_eq!(
        inspected.unwrap_err(),
        super::super::database::InspectError::Sqlite("no such column: nope".into())
    );
}

#[test]
fn a_table_valued_pragma_is_refused_at_prepare() {
    let dir = TempDir::new();
    let db = database(&dir, true);
    for (sql, pragma) in [
        ("SELECT name FROM pragma_database_list", "database_list"),
        ("SELECT * FROM PRAGMA_TABLE_INFO('t')", "table_info"),
    ] {
        assert_eq!(refusal(&db, sql), Refusal::Pragma(pragma.into()), "{sql}");
    }
}

#[test]
fn extension_loading_is_off_behind_the_authorizer_too() {
    let dir = TempDir::new();
    let db = database(&dir, true);
    let err = db
        .with_connection(|c| {
            c.trusted(|c| c.query_row("SELECT load_extension('/nonexistent.so')", [], |_| Ok(())))
        })
        .unwrap()
        .unwrap_err();
    // SQLite's own answer when extension loading was never enabled.
    assert_eq!(
        super::super::database::sqlite_message(&err),
        "not authorized"
    );
}

#[test]
fn a_connection_left_with_state_is_closed_not_reused() {
    let dir = TempDir::new();
    let db = database(&dir, false);
    assert_eq!(db.pooled(), 1);
    run_sql(&db, "SELECT 1").unwrap();
    assert_eq!(db.pooled(), 1, "a clean connection goes back to the pool");

    let other = dir.0.join("other.db");
    create_from_seed(&other, "CREATE TABLE o (a);").unwrap();
    let dirty: Vec<(&str, String)> = vec![
        ("attached", format!("ATTACH '{}' AS other", other.display())),
        ("attached in memory", "ATTACH ':memory:' AS mem".into()),
        ("open transaction", "BEGIN".into()),
        ("temp table", "CREATE TEMP TABLE x (a)".into()),
        ("temp view", "CREATE TEMP VIEW v AS SELECT 1".into()),
    ];
    for (what, sql) in dirty {
        // Only trusted code can do this; the check must catch it anyway.
        db.with_connection(|c| c.trusted(|c| c.execute_batch(&sql)).unwrap())
            .unwrap();
        assert_eq!(db.pooled(), 0, "{what}: the connection was reused");
        // The next call gets a fresh connection that sees none of it.
        let rows = run_sql(&db, "SELECT count(*) AS n FROM t").unwrap();
        assert_eq!(rows, vec![json!({"n": 2})], "{what}");
        assert_eq!(db.pooled(), 1, "{what}");
    }
}

#[test]
fn a_view_changed_to_call_load_extension_is_refused_when_re_prepared() {
    let dir = TempDir::new();
    let db = database(&dir, true);
    let sql = "SELECT * FROM v";
    let mut plain = rusqlite::Connection::open(db.path()).unwrap();
    plain
        .execute_batch("CREATE VIEW v AS SELECT name FROM t")
        .unwrap();
    // Prepared and cached on the pooled connection while harmless.
    assert_eq!(run_sql(&db, sql).unwrap().len(), 2);
    // Another process turns the view into something a tool may not do. The
    // cached statement is re-prepared; SQLite's untrusted-schema rule
    // refuses the function inside a view even before the authorizer does.
    let tx = plain.transaction().unwrap();
    tx.execute_batch("DROP VIEW v; CREATE VIEW v AS SELECT load_extension('/tmp/evil.so') AS name")
        .unwrap();
    tx.commit().unwrap();
    match run_sql(&db, sql).unwrap_err() {
        RunError::Refused(r) => assert_eq!(r, Refusal::Function("load_extension".into())),
        RunError::Sqlite(e) => assert!(
            e.to_string().contains("unsafe use of load_extension"),
            "{e}"
        ),
    }
    assert_eq!(db.pooled(), 1, "the connection is still clean");
}
