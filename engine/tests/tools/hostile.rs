//! Hostile arguments: each gives an error outcome without reaching SQLite,
//! or (an injection string where a string is allowed) is bound as data and
//! matches nothing. Afterwards the database file is byte-for-byte unchanged.
//! A property test checks "valid means executed, invalid means not".

use std::cell::Cell;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every hostile input for `lookup_order` (integer `order_id`, no other
/// property allowed), with a fragment of the error it must produce.
fn hostile_inputs() -> Vec<(&'static str, String, &'static str)> {
    let megabyte = format!(r#"{{"order_id": "{}"}}"#, "9".repeat(1 << 20));
    let deep = format!(
        r#"{{"order_id": {}1{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_objects = format!(r#"{}{}"#, r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    vec![
        (
            "boolean injection",
            r#"{"order_id": "1 OR 1=1"}"#.into(),
            r#"/order_id: "1 OR 1=1" is not of type "integer""#,
        ),
        (
            "drop table",
            r#"{"order_id": "'; DROP TABLE orders; --"}"#.into(),
            r#"/order_id: "'; DROP TABLE orders; --" is not of type "integer""#,
        ),
        (
            "string for integer",
            r#"{"order_id": "7"}"#.into(),
            r#"/order_id: "7" is not of type "integer""#,
        ),
        (
            "float for integer",
            r#"{"order_id": 7.5}"#.into(),
            r#"/order_id: 7.5 is not of type "integer""#,
        ),
        (
            "below minimum",
            r#"{"order_id": 0}"#.into(),
            "/order_id: 0 is less than the minimum of 1",
        ),
        (
            "extra property",
            r#"{"order_id": 7, "limit": "ALL"}"#.into(),
            "/: Additional properties are not allowed ('limit' was unexpected)",
        ),
        (
            "1 MB string",
            megabyte,
            "arguments are 1048592 bytes, more than the 65536 allowed",
        ),
        (
            "10,000 deep arrays",
            deep,
            "arguments are nested more than 32 levels deep",
        ),
        (
            "10,000 deep objects",
            deep_objects,
            "arguments are nested more than 32 levels deep",
        ),
        (
            "truncated JSON",
            r#"{"order_id": "#.into(),
            "arguments are not valid JSON: EOF while parsing a value at line 1 column 13",
        ),
        (
            "missing required",
            "{}".into(),
            r#"/: "order_id" is a required property"#,
        ),
        (
            "null",
            r#"{"order_id": null}"#.into(),
            r#"/order_id: null is not of type "integer""#,
        ),
        (
            "top-level array",
            r#"[7]"#.into(),
            r#"/: [7] is not of type "object""#,
        ),
        (
            "top-level string",
            r#""SELECT 1""#.into(),
            r#"/: "SELECT 1" is not of type "object""#,
        ),
        (
            "duplicate key, last wins",
            r#"{"order_id": 7, "order_id": "7; --"}"#.into(),
            r#"is not of type "integer""#,
        ),
        (
            "number too large",
            r#"{"order_id": 1e400}"#.into(),
            "arguments are not valid JSON: number out of range",
        ),
        (
            "lone surrogate",
            r#"{"order_id": "\ud800"}"#.into(),
            "arguments are not valid JSON: ",
        ),
        (
            "trailing garbage",
            r#"{"order_id": 7} ; DROP TABLE orders"#.into(),
            "arguments are not valid JSON: trailing characters",
        ),
    ]
}

#[test]
fn hostile_arguments_never_reach_the_database() {
    let shop = Shop::new();
    let before = shop.db_bytes();
    let tool = shop.tool(LOOKUP_ORDER);
    let rt = rt();
    for (what, args, expected) in hostile_inputs() {
        let outcome = rt.block_on(tool.call(&args));
        assert!(!outcome.ok, "{what}: {outcome:?}");
        let error = outcome.error.clone().unwrap();
        assert!(error.contains(expected), "{what}: {error}");
        assert_eq!(outcome.content, json!({"error": error}), "{what}");
        assert_eq!((outcome.rows, outcome.truncated), (0, false), "{what}");
        assert!(
            error.len() < 1000,
            "{what}: message of {} bytes",
            error.len()
        );
        assert_eq!(tool.database().executions(), 0, "{what} reached SQLite");
    }
    // The table is still there and the file was never written.
    assert!(rt.block_on(tool.call(r#"{"order_id": 7}"#)).ok);
    drop(tool);
    assert!(shop.db_bytes() == before, "database file changed");
}

#[test]
fn injection_strings_bound_as_data_match_nothing() {
    let shop = Shop::new();
    let before = shop.db_bytes();
    let tool = shop.tool(ORDERS_BY_STATUS);
    let rt = rt();
    for status in [
        "x' OR '1'='1",
        "'; DROP TABLE orders; --",
        "pending' --",
        "pending\" OR \"1\"=\"1",
        "\u{0}pending",
        "%",
    ] {
        let args = json!({ "status": status }).to_string();
        let outcome = rt.block_on(tool.call(&args));
        assert!(outcome.ok, "{status}: {outcome:?}");
        assert_eq!(
            outcome.content,
            json!({"rows": [], "row_count": 0, "truncated": false}),
            "{status}"
        );
    }
    assert_eq!(tool.database().executions(), 6);
    // The orders table survived and still answers.
    let pending = rt.block_on(tool.call(r#"{"status": "pending"}"#));
    assert_eq!(pending.rows, 3);
    drop(tool);
    assert!(shop.db_bytes() == before, "database file changed");
}

#[test]
fn an_oversized_string_within_the_byte_limit_is_validated_not_bound() {
    let shop = Shop::new();
    let tool = shop.tool(ORDERS_BY_STATUS);
    let args = json!({ "status": "p".repeat(60_000) }).to_string();
    let outcome = rt().block_on(tool.call(&args));
    assert!(!outcome.ok);
    let error = outcome.error.unwrap();
    assert!(error.contains("is longer than 40 characters"), "{error}");
    assert!(error.len() < 400, "{} bytes", error.len());
    assert_eq!(tool.database().executions(), 0);
}

const PROP_TOOL: &str = "\
name: prop
description: Arbitrary arguments
parameters:
  type: object
  properties:
    order_id: {type: integer, minimum: 1}
    status: {type: string, maxLength: 20}
    note: {}
  required: [order_id]
  additionalProperties: false
sql:
  database: shop
  query: >-
    SELECT id, status FROM orders
    WHERE id = :order_id AND (:status IS NULL OR status = :status)
    AND (:note IS NULL OR length(:note) >= 0)
";

/// Small JSON values: scalars, and arrays and objects of them, nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z' ;=%-]{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Argument objects that the schema accepts often, and rejects often.
fn arguments() -> impl Strategy<Value = Value> {
    let order_id = prop_oneof![3 => (1i64..40).prop_map(Value::from), 1 => json_value()];
    let status = prop_oneof![
        2 => prop_oneof![Just("pending"), Just("delivered"), Just("x' OR '1'='1")].prop_map(Value::from),
        1 => json_value(),
    ];
    (
        prop::option::weighted(0.9, order_id),
        prop::option::of(status),
        prop::option::of(json_value()),
        prop::collection::btree_map("[a-z]{1,3}", json_value(), 0..2),
    )
        .prop_map(|(order_id, status, note, extra)| {
            let mut map = serde_json::Map::new();
            for (k, v) in extra {
                map.insert(k, v);
            }
            for (k, v) in [("order_id", order_id), ("status", status), ("note", note)] {
                if let Some(v) = v {
                    map.insert(k.to_string(), v);
                }
            }
            Value::Object(map)
        })
}

#[test]
fn validated_means_executed_and_rejected_means_never_reached() {
    let shop = Shop::new();
    let before = shop.db_bytes();
    let tool = shop.tool(PROP_TOOL);
    // An independent validator of the same schema decides the expectation.
    let oracle = jsonschema::draft202012::new(tool.parameters()).unwrap();
    let rt = rt();
    let (accepted, rejected) = (Cell::new(0u32), Cell::new(0u32));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
    runner
        .run(&arguments(), |args| {
            let executions = tool.database().executions();
            let outcome = rt.block_on(tool.call(&args.to_string()));
            if oracle.is_valid(&args) {
                accepted.set(accepted.get() + 1);
                prop_assert!(outcome.ok, "{args}: {outcome:?}");
                prop_assert_eq!(tool.database().executions(), executions + 1);
            } else {
                rejected.set(rejected.get() + 1);
                prop_assert!(!outcome.ok, "{args}: {outcome:?}");
                let error = outcome.error.unwrap_or_default();
                prop_assert!(error.starts_with("arguments do not match"), "{}", error);
                prop_assert_eq!(tool.database().executions(), executions);
            }
            Ok(())
        })
        .unwrap();
    // Both sides of the property were exercised.
    let (accepted, rejected) = (accepted.get(), rejected.get());
    assert!(
        accepted > 50 && rejected > 50,
        "{accepted} accepted, {rejected} rejected"
    );
    drop(tool);
    assert!(shop.db_bytes() == before, "database file changed");
}
