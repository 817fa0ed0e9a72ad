//! Valid calls, caps, timeouts and an unavailable database.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn lookup_order_returns_its_row() {
    let shop = Shop::new();
    let tool = shop.tool(LOOKUP_ORDER);
    let outcome = rt().block_on(tool.call(r#"{"order_id": 7}"#));
    assert!(outcome.ok, "{outcome:?}");
    assert_eq!(
        outcome.content,
        json!({
            "rows": [{"id": 7, "status": "delivered", "total_cents": 7600}],
            "row_count": 1,
            "truncated": false
        })
    );
    assert_eq!(
        (outcome.rows, outcome.truncated, outcome.error),
        (1, false, None)
    );
    assert_eq!(tool.database().executions(), 1);
}

#[test]
fn an_order_that_does_not_exist_gives_no_rows() {
    let shop = Shop::new();
    let tool = shop.tool(LOOKUP_ORDER);
    let outcome = rt().block_on(tool.call(r#"{"order_id": 31}"#));
    assert!(outcome.ok);
    assert_eq!(
        outcome.content,
        json!({"rows": [], "row_count": 0, "truncated": false})
    );
}

#[test]
fn strings_optional_values_and_joins() {
    let shop = Shop::new();
    let rt = rt();
    let by_status = shop.tool(ORDERS_BY_STATUS);
    let outcome = rt.block_on(by_status.call(r#"{"status": "pending"}"#));
    assert_eq!(
        outcome.content["rows"],
        json!([
            {"id": 8, "status": "pending"},
            {"id": 16, "status": "pending"},
            {"id": 24, "status": "pending"}
        ])
    );

    // An optional property left out binds as NULL.
    let customer_orders = shop.tool(
        "\
name: customer_orders
description: Orders of a customer, optionally of one status
parameters:
  type: object
  properties:
    customer_id: {type: integer}
    status: {type: string}
  required: [customer_id]
sql:
  database: shop
  query: >-
    SELECT o.id, o.status, o.total_cents, c.name AS customer
    FROM orders o JOIN customers c ON c.id = o.customer_id
    WHERE o.customer_id = :customer_id AND (:status IS NULL OR o.status = :status)
    ORDER BY o.id
",
    );
    let all = rt.block_on(customer_orders.call(r#"{"customer_id": 3}"#));
    assert_eq!(all.rows, 3, "{all:?}");
    assert_eq!(
        all.content["rows"][1],
        json!({"id": 16, "status": "pending", "total_cents": 5800, "customer": "Alan Turing"})
    );
    let shipped = rt.block_on(customer_orders.call(r#"{"customer_id": 3, "status": "shipped"}"#));
    assert_eq!(
        shipped.content["rows"],
        json!([{"id": 26, "status": "shipped", "total_cents": 5200, "customer": "Alan Turing"}])
    );
}

#[test]
fn booleans_bind_as_integers_and_arrays_as_json_text() {
    let shop = Shop::new();
    let tool = shop.tool(
        "\
name: echo
description: Echo bound values back
parameters:
  type: object
  properties: {flag: {type: boolean}, ids: {type: array, items: {type: integer}}, x: {type: number}}
sql:
  database: shop
  query: >-
    SELECT :flag AS flag, :ids AS ids, :x AS x,
    (SELECT count(*) FROM orders WHERE id IN (SELECT value FROM json_each(:ids))) AS matched
",
    );
    let outcome = rt().block_on(tool.call(r#"{"flag": true, "ids": [1, 2, 99], "x": 2.5}"#));
    assert_eq!(
        outcome.content["rows"],
        json!([{"flag": 1, "ids": "[1,2,99]", "x": 2.5, "matched": 2}])
    );
}

fn all_orders(extra: &str) -> String {
    format!(
        "\
name: all_orders
description: Every order
parameters: {{type: object}}
sql:
  database: shop
  query: SELECT id, status, total_cents FROM orders ORDER BY id
{extra}"
    )
}

#[test]
fn rows_are_capped_by_max_rows() {
    let shop = Shop::new();
    let rt = rt();
    let capped = rt.block_on(shop.tool(&all_orders("  max_rows: 5\n")).call("{}"));
    assert!(capped.ok);
    assert_eq!((capped.rows, capped.truncated), (5, true));
    assert_eq!(capped.content["row_count"], 5);
    assert_eq!(capped.content["truncated"], true);
    assert_eq!(capped.content["rows"][4]["id"], 5);

    let exact = rt.block_on(shop.tool(&all_orders("  max_rows: 30\n")).call("{}"));
    assert_eq!((exact.rows, exact.truncated), (30, false));

    // The default is 50, more than the 30 orders.
    let default = rt.block_on(shop.tool(&all_orders("")).call(""));
    assert_eq!((default.rows, default.truncated), (30, false));
}

#[test]
fn rows_are_capped_by_max_bytes() {
    let shop = Shop::new();
    let rt = rt();
    let outcome = rt.block_on(shop.tool(&all_orders("  max_bytes: 200\n")).call("{}"));
    assert!(outcome.ok);
    assert!(outcome.truncated);
    let bytes = serde_json::to_string(&outcome.content["rows"])
        .unwrap()
        .len();
    assert!(bytes <= 200, "{bytes}");
    // One more row would not have fit.
    assert!(bytes + 45 > 200, "{bytes}");
    assert_eq!(
        outcome.rows,
        outcome.content["rows"].as_array().unwrap().len()
    );

    let none = rt.block_on(shop.tool(&all_orders("  max_bytes: 10\n")).call("{}"));
    assert!(none.ok);
    assert_eq!((none.rows, none.truncated), (0, true));
}

const SLOW: &str = "\
name: slow
description: Counts to a billion
parameters: {type: object}
sql:
  database: shop
  query: >-
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)
    SELECT count(*) AS n FROM c
  timeout: 50ms
";

#[test]
fn a_long_query_is_interrupted_at_its_timeout() {
    let shop = Shop::new();
    let rt = rt();
    let slow = shop.tool(SLOW);
    let started = Instant::now();
    // The outer bound only keeps a broken interrupt from hanging the suite.
    let outcome = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), slow.call("{}")).await })
        .expect("the call did not return");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!outcome.ok);
    assert_eq!(outcome.error.as_deref(), Some("query timed out after 50ms"));
    assert_eq!(
        outcome.content,
        json!({"error": "query timed out after 50ms"})
    );

    // The interrupted connection went back to the pool and serves the next
    // call normally: the interrupt does not linger.
    let lookup = shop.tool(LOOKUP_ORDER);
    for _ in 0..5 {
        let outcome = rt.block_on(lookup.call(r#"{"order_id": 1}"#));
        assert!(outcome.ok, "{outcome:?}");
    }
}

#[test]
fn many_timeouts_at_once_all_return() {
    let shop = Shop::new();
    let rt = rt();
    let slow = shop.tool(SLOW);
    let outcomes = rt.block_on(async {
        let calls = (0..8).map(|_| slow.call("{}"));
        tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::future::join_all(calls),
        )
        .await
    });
    let outcomes = outcomes.expect("the calls did not return");
    assert!(
        outcomes
            .iter()
            .all(|o| o.error.as_deref() == Some("query timed out after 50ms"))
    );
}

#[test]
fn a_database_deleted_at_run_time_is_an_error_outcome() {
    let shop = Shop::new();
    let tool = shop.tool(LOOKUP_ORDER);
    let rt = rt();
    assert!(rt.block_on(tool.call(r#"{"order_id": 1}"#)).ok);
    std::fs::remove_file(shop.db_path()).unwrap();
    let outcome = rt.block_on(tool.call(r#"{"order_id": 1}"#));
    assert!(!outcome.ok);
    assert_eq!(
        outcome.error.as_deref(),
        Some("database \"shop\" is unavailable: database file is missing")
    );
}

#[test]
fn a_locked_database_is_an_error_outcome() {
    let shop = Shop::new();
    // SQLite waits for the lock half the timeout, then gives up with
    // "database is locked"; the other half is slack for a slow machine.
    let tool = shop.tool(&LOOKUP_ORDER.replace("  max_rows: 20\n", "  timeout: 1s\n"));
    let writer = rusqlite::Connection::open(shop.db_path()).unwrap();
    writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let rt = rt();
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), tool.call(r#"{"order_id": 1}"#)).await
    });
    let outcome = outcome.expect("the call did not return");
    assert!(!outcome.ok);
    assert_eq!(
        outcome.error.as_deref(),
        Some("query failed: database is locked")
    );
    writer.execute_batch("ROLLBACK").unwrap();
    assert!(rt.block_on(tool.call(r#"{"order_id": 1}"#)).ok);
}

#[test]
fn a_read_write_tool_writes() {
    let shop = Shop::with_settings(
        "databases:\n  shop: {path: shop.db, seed: seed.sql, read_only: false}\n",
    );
    let tool = shop.tool(
        "\
name: cancel_order
description: Cancel a pending order
parameters:
  type: object
  properties: {order_id: {type: integer}}
  required: [order_id]
sql:
  database: shop
  query: UPDATE orders SET status = 'cancelled' WHERE id = :order_id AND status = 'pending' RETURNING id, status
",
    );
    let rt = rt();
    let first = rt.block_on(tool.call(r#"{"order_id": 8}"#));
    assert_eq!(
        first.content["rows"],
        json!([{"id": 8, "status": "cancelled"}])
    );
    let second = rt.block_on(tool.call(r#"{"order_id": 8}"#));
    assert_eq!(second.content["rows"], json!([]));
}

#[test]
fn calls_are_send_and_run_concurrently() {
    fn assert_send<T: Send>(_: &T) {}
    let shop = Shop::new();
    let tool = std::sync::Arc::new(shop.tool(LOOKUP_ORDER));
    assert_send(&tool.call("{}"));
    let rt = rt();
    let outcomes = rt.block_on(async {
        let tasks: Vec<_> = (1..=30)
            .map(|id| {
                let tool = tool.clone();
                tokio::spawn(async move { tool.call(&format!(r#"{{"order_id": {id}}}"#)).await })
            })
            .collect();
        futures_util::future::join_all(tasks).await
    });
    for (i, outcome) in outcomes.into_iter().enumerate() {
        let outcome = outcome.unwrap();
        assert_eq!(outcome.content["rows"][0]["id"], i + 1);
    }
}
