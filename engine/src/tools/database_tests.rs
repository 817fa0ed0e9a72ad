//! Tests of `database.rs`: query inspection, seeding, rows to JSON, caps.
use std::sync::atomic::AtomicUsize;

use serde_json::json;

use super::*;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-db-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
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

const SEED: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
INSERT INTO t VALUES (1, 'one', 1.5, x'00ff10'), (2, 'two', NULL, NULL), (3, 'three', 3.0, NULL);";

fn memory() -> ToolConnection {
    let conn = Connection::open_in_memory().unwrap();
    conn.execute_batch(SEED).unwrap();
    ToolConnection::guard(conn, true).unwrap()
}

#[test]
fn one_statement_with_trailing_comment_or_semicolons_is_accepted() {
    let conn = memory();
    for sql in [
        "SELECT 1",
        "SELECT 1;",
        "SELECT 1; -- comment",
        "SELECT 1; /* block */ ;; ",
        "-- leading comment\nSELECT 1",
    ] {
        let shape = inspect(&conn, sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert!(shape.readonly, "{sql}");
    }
}

#[test]
fn a_second_statement_is_refused_even_when_it_would_not_prepare() {
    let conn = memory();
    for sql in [
        "SELECT 1; SELECT 2",
        "SELECT 1; DROP TABLE t",
        "SELECT 1; SELEC nonsense",
        "SELECT 1; -- comment\nSELECT 2",
    ] {
        assert_eq!(
            inspect(&conn, sql).unwrap_err(),
            InspectError::MultipleStatements,
            "{sql}"
        );
    }
    // The DROP was prepared at most, never run.
    assert!(inspect(&conn, "SELECT * FROM t").is_ok());
}

#[test]
fn empty_and_broken_queries_are_told_apart() {
    let conn = memory();
    assert_eq!(inspect(&conn, "").unwrap_err(), InspectError::Empty);
    assert_eq!(
        inspect(&conn, " -- nothing\n").unwrap_err(),
        InspectError::Empty
    );
    assert_eq!(
        inspect(&conn, "SELECT nope FROM t").unwrap_err(),
        InspectError::Sqlite("no such column: nope".into())
    );
    assert_eq!(
        inspect(&conn, "SELECT * FROM nope").unwrap_err(),
        InspectError::Sqlite("no such table: nope".into())
    );
}

#[test]
fn parameters_keep_their_prefix_and_positionals_are_noticed() {
    let conn = memory();
    let shape = inspect(
        &conn,
        "SELECT * FROM t WHERE id = :a OR name = @b OR score = $c OR id = :a",
    )
    .unwrap();
    assert_eq!(
        shape.params,
        vec![
            (1, ":a".to_string()),
            (2, "@b".to_string()),
            (3, "$c".to_string())
        ]
    );
    assert_eq!(shape.positional, None);
    assert_eq!(shape.columns, ["id", "name", "score", "data"]);
    let shape = inspect(&conn, "SELECT * FROM t WHERE id = ?").unwrap();
    assert_eq!(shape.positional.as_deref(), Some("?"));
    let shape = inspect(&conn, "SELECT * FROM t WHERE id = :a OR id = ?5").unwrap();
    assert_eq!(shape.positional.as_deref(), Some("?5"));
}

#[test]
fn writes_are_not_readonly() {
    let conn = memory();
    for sql in [
        "DELETE FROM t",
        "UPDATE t SET name = 'x'",
        "INSERT INTO t (id) VALUES (9)",
        "WITH x AS (SELECT 1) DELETE FROM t",
    ] {
        assert!(!inspect(&conn, sql).unwrap().readonly, "{sql}");
    }
}

#[test]
fn sqlite_values_become_json() {
    assert_eq!(to_json(ValueRef::Null), json!(null));
    assert_eq!(to_json(ValueRef::Integer(-5)), json!(-5));
    assert_eq!(to_json(ValueRef::Real(2.5)), json!(2.5));
    assert_eq!(to_json(ValueRef::Real(f64::INFINITY)), json!("inf"));
    assert_eq!(to_json(ValueRef::Text(b"caf\xc3\xa9")), json!("café"));
    assert_eq!(to_json(ValueRef::Text(b"bad \xff")), json!("bad \u{fffd}"));
    assert_eq!(
        to_json(ValueRef::Blob(&[0x00, 0xff, 0x10])),
        json!("00ff10")
    );
    assert_eq!(hex(&[]), "");
}

#[test]
fn json_len_matches_serialization() {
    for v in [
        json!({"a": "é\"\n", "b": [1, 2.5, null]}),
        json!([]),
        json!("x"),
    ] {
        assert_eq!(json_len(&v), serde_json::to_string(&v).unwrap().len());
    }
}

fn seeded(dir: &TempDir) -> Database {
    let path = dir.0.join("sub/dir/t.db");
    create_from_seed(&path, SEED).unwrap();
    Database::open("t", &path, true).unwrap()
}

fn caps(max_rows: usize, max_bytes: usize) -> Caps {
    Caps {
        max_rows,
        max_bytes,
        busy_timeout: Duration::from_millis(100),
    }
}

fn run_all(db: &Database, sql: &str, caps: Caps) -> Rows {
    db.with_connection(|c| run(db, c, sql, &[], caps))
        .unwrap()
        .unwrap()
}

#[test]
fn seed_creates_parent_directories_and_rows_convert() {
    let dir = TempDir::new();
    let db = seeded(&dir);
    let rows = run_all(&db, "SELECT * FROM t ORDER BY id", caps(10, 10_000));
    assert!(!rows.truncated);
    assert_eq!(
        Value::Array(rows.rows),
        json!([
            {"id": 1, "name": "one", "score": 1.5, "data": "00ff10"},
            {"id": 2, "name": "two", "score": null, "data": null},
            {"id": 3, "name": "three", "score": 3.0, "data": null}
        ])
    );
    assert_eq!(db.executions(), 1);
}

#[test]
fn rows_stop_at_max_rows_and_max_bytes() {
    let dir = TempDir::new();
    let db = seeded(&dir);
    let sql = "SELECT id, name FROM t ORDER BY id";
    let exact = run_all(&db, sql, caps(3, 10_000));
    assert_eq!((exact.rows.len(), exact.truncated), (3, false));
    let capped = run_all(&db, sql, caps(2, 10_000));
    assert_eq!((capped.rows.len(), capped.truncated), (2, true));

    // `[{"id":1,"name":"one"},{"id":2,"name":"two"}]` is 45 bytes.
    let two = run_all(&db, sql, caps(10, 45));
    assert_eq!((two.rows.len(), two.truncated), (2, true));
    assert_eq!(serde_json::to_string(&two.rows).unwrap().len(), 45);
    let one = run_all(&db, sql, caps(10, 44));
    assert_eq!((one.rows.len(), one.truncated), (1, true));
    let none = run_all(&db, sql, caps(10, 5));
    assert_eq!((none.rows.len(), none.truncated), (0, true));
}

#[test]
fn a_failing_seed_leaves_no_file() {
    let dir = TempDir::new();
    let path = dir.0.join("bad.db");
    let err =
        create_from_seed(&path, "CREATE TABLE a (x); INSERT INTO nope VALUES (1);").unwrap_err();
    assert_eq!(err, "no such table: nope");
    assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
}

#[test]
fn read_only_connections_refuse_writes() {
    let dir = TempDir::new();
    let db = seeded(&dir);
    let err = db
        .with_connection(|c| c.execute("DELETE FROM t", []))
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlite_message(&err), "not authorized");
    // Behind the authorizer, the connection itself is read-only too.
    let err = db
        .with_connection(|c| c.trusted(|c| c.execute("DELETE FROM t", [])))
        .unwrap()
        .unwrap_err();
    assert!(sqlite_message(&err).contains("readonly"), "{err}");
}

#[test]
fn a_deleted_or_replaced_file_is_noticed() {
    let dir = TempDir::new();
    let db = seeded(&dir);
    run_all(&db, "SELECT 1", caps(1, 100));
    std::fs::remove_file(db.path()).unwrap();
    let err = db.with_connection(|_| ()).unwrap_err();
    assert_eq!(err, "database file is missing");

    // A new file at the same path is opened afresh, not served from the
    // pooled connection to the deleted one.
    create_from_seed(
        db.path(),
        "CREATE TABLE other (x); INSERT INTO other VALUES (7);",
    )
    .unwrap();
    let rows = run_all(&db, "SELECT x FROM other", caps(1, 100));
    assert_eq!(rows.rows, vec![json!({"x": 7})]);
}

#[test]
fn a_file_that_is_not_a_database_fails_to_open() {
    let dir = TempDir::new();
    let path = dir.0.join("junk.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    assert_eq!(
        Database::open("junk", &path, true).unwrap_err(),
        "file is not a database"
    );
}
