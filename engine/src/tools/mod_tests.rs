//! Tests of `mod.rs` and `exec.rs`: outcomes, cancellation of a dropped call.
use std::path::PathBuf;
use std::time::Instant;

use rusqlite::Connection;

use super::database::create_from_seed;
use super::exec::Cancel;
use super::*;

#[test]
fn outcomes_carry_the_message_in_content() {
    let failure = ToolOutcome::failure("arguments are not valid JSON: x".into());
    assert_eq!(
        serde_json::to_value(&failure).unwrap(),
        json!({
            "ok": false,
            "content": {"error": "arguments are not valid JSON: x"},
            "rows": 0,
            "truncated": false,
            "error": "arguments are not valid JSON: x"
        })
    );
    let success = ToolOutcome::success(vec![json!({"id": 1})], true);
    assert_eq!(
        success.content,
        json!({"rows": [{"id": 1}], "row_count": 1, "truncated": true})
    );
    assert_eq!(
        (success.ok, success.rows, success.truncated),
        (true, 1, true)
    );
}

#[test]
fn a_cancel_fired_before_the_query_starts_stops_it() {
    let conn = Connection::open_in_memory().unwrap();
    let cancel = Cancel::default();
    assert!(cancel.arm(&conn));
    cancel.fire();
    cancel.disarm();
    assert!(!cancel.arm(&conn));
    // An interrupt sent while nothing ran does not reach later statements.
    assert_eq!(
        conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        1
    );
}

/// A tool on a fresh one-table database, built by hand.
fn slow_tool(dir: &std::path::Path, timeout: Duration) -> Tool {
    let path = dir.join("t.db");
    create_from_seed(&path, "CREATE TABLE t (x);").unwrap();
    let schema = json!({"type": "object"});
    Tool {
        name: "slow".into(),
        description: "counts to a billion".into(),
        validator: jsonschema::draft202012::new(&schema).unwrap(),
        parameters: schema,
        database: Arc::new(Database::open("t", &path, true).unwrap()),
        query: Arc::from(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) AS n FROM c",
        ),
        params: Arc::from(Vec::new()),
        max_rows: 10,
        max_bytes: 1000,
        timeout,
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-tools-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_interrupts_its_query() {
    let dir = temp_dir("drop");
    // A timeout far away: only the drop can stop this query in time.
    let tool = slow_tool(&dir, Duration::from_secs(600));
    let db = tool.database.clone();
    assert_eq!(db.pooled(), 1);
    let abandoned = tokio::time::timeout(Duration::from_millis(100), tool.call("{}")).await;
    assert!(abandoned.is_err());
    // The blocking thread was interrupted and gave its connection back.
    let started = Instant::now();
    while db.pooled() < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the abandoned query is still running"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(db.executions(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A tool built by hand, as if `sluice check` had been bypassed.
fn unchecked_tool(dir: &std::path::Path, query: &str, read_only: bool) -> Tool {
    let path = dir.join("u.db");
    if !path.exists() {
        create_from_seed(&path, "CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    }
    let schema = json!({"type": "object"});
    Tool {
        name: "unchecked".into(),
        description: "never compiled".into(),
        validator: jsonschema::draft202012::new(&schema).unwrap(),
        parameters: schema,
        database: Arc::new(Database::open("u", &path, read_only).unwrap()),
        query: Arc::from(query),
        params: Arc::from(Vec::new()),
        max_rows: 10,
        max_bytes: 1000,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn a_tool_that_skipped_check_is_refused_at_run_time() {
    let dir = temp_dir("unchecked");
    for (query, read_only, refused) in [
        ("ATTACH ':memory:' AS x", true, "ATTACH"),
        ("DETACH temp", false, "DETACH"),
        ("PRAGMA query_only = 0", true, "PRAGMA query_only"),
        (
            "SELECT load_extension('/tmp/evil.so')",
            true,
            "function load_extension()",
        ),
        ("DELETE FROM t", true, "a write on a read-only database"),
        ("CREATE TEMP TABLE s (x)", false, "a schema change"),
        ("BEGIN", false, "transaction control"),
    ] {
        let tool = unchecked_tool(&dir, query, read_only);
        let outcome = tool.call("{}").await;
        let error = outcome.error.unwrap_or_else(|| panic!("{query} ran"));
        assert!(
            error.starts_with(&format!("query refused: {refused}")),
            "{query}: {error}"
        );
        // The refused statement left nothing behind: the same connection
        // goes back to the pool and the table is still there.
        assert_eq!(tool.database.pooled(), 1, "{query}");
        let check = unchecked_tool(&dir, "SELECT count(*) AS n FROM t", true);
        assert_eq!(check.call("{}").await.content["rows"], json!([{"n": 1}]));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
