//! Tests of `args.rs`: the checks that run before SQLite is touched.
use serde_json::json;

use super::*;

#[test]
fn nesting_is_counted_outside_strings_only() {
    assert!(!nesting_exceeds(r#"{"a": [[1]]}"#, 3));
    assert!(nesting_exceeds(r#"{"a": [[[1]]]}"#, 3));
    // Brackets and escaped quotes inside strings do not open anything.
    assert!(!nesting_exceeds(r#"{"a": "[[[[\"[[[[", "b": 1}"#, 1));
    assert!(!nesting_exceeds(r#"{"a": "\\", "b": [1]}"#, 2));
    // Closing brackets never take the depth below zero.
    assert!(nesting_exceeds("]]]]{{{", 2));
}

#[test]
fn depth_limit_is_inclusive() {
    let at = |n: usize| format!("{}1{}", "[".repeat(n - 1), "]".repeat(n - 1));
    let ok = format!(r#"{{"a": {}}}"#, at(MAX_ARGUMENT_DEPTH));
    let too_deep = format!(r#"{{"a": {}}}"#, at(MAX_ARGUMENT_DEPTH + 1));
    assert!(parse(&ok).is_ok());
    assert_eq!(
        parse(&too_deep).unwrap_err(),
        "arguments are nested more than 32 levels deep"
    );
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    let text = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_ARGUMENT_BYTES));
    let err = parse(&text).unwrap_err();
    assert_eq!(
        err,
        format!(
            "arguments are {} bytes, more than the 65536 allowed",
            MAX_ARGUMENT_BYTES + 9
        )
    );
}

#[test]
fn empty_text_counts_as_an_empty_object() {
    assert_eq!(parse("").unwrap(), json!({}));
    assert_eq!(parse("  \n").unwrap(), json!({}));
}

#[test]
fn invalid_json_names_the_place() {
    let err = parse(r#"{"order_id": "#).unwrap_err();
    assert_eq!(
        err,
        "arguments are not valid JSON: EOF while parsing a value at line 1 column 13"
    );
    // A lone surrogate cannot become a Rust string.
    assert!(
        parse(r#"{"a": "\ud800"}"#)
            .unwrap_err()
            .starts_with("arguments are not valid JSON: ")
    );
}

fn validator() -> Validator {
    jsonschema::draft202012::new(&json!({
        "type": "object",
        "properties": {
            "order_id": {"type": "integer", "minimum": 1},
            "tags": {"type": "array", "items": {"type": "string"}}
        },
        "required": ["order_id"],
        "additionalProperties": false
    }))
    .unwrap()
}

#[test]
fn valid_arguments_give_no_message() {
    assert_eq!(validate(&validator(), &json!({"order_id": 3})), None);
}

#[test]
fn every_error_is_reported_with_its_path() {
    let msg = validate(
        &validator(),
        &json!({"order_id": "7", "tags": ["a", 2], "extra": true}),
    )
    .unwrap();
    assert!(
        msg.starts_with("arguments do not match the parameters schema: "),
        "{msg}"
    );
    assert!(
        msg.contains(r#"/order_id: "7" is not of type "integer""#),
        "{msg}"
    );
    assert!(
        msg.contains(r#"/tags/1: 2 is not of type "string""#),
        "{msg}"
    );
    assert!(
        msg.contains("/: Additional properties are not allowed ('extra' was unexpected)"),
        "{msg}"
    );
    assert_eq!(msg.matches("; ").count(), 2, "{msg}");
}

#[test]
fn missing_required_property_is_reported_at_the_root() {
    let msg = validate(&validator(), &json!({})).unwrap();
    assert!(
        msg.ends_with(r#"/: "order_id" is a required property"#),
        "{msg}"
    );
}

#[test]
fn long_values_and_many_errors_are_cut() {
    let long = "y".repeat(10_000);
    let msg = validate(&validator(), &json!({"order_id": long})).unwrap();
    assert!(msg.len() < 200, "{} bytes", msg.len());
    // The value is shortened, the reason is kept.
    assert!(
        msg.ends_with(&format!(
            r#"/order_id: "{}... is not of type "integer""#,
            "y".repeat(59)
        )),
        "{msg}"
    );

    let tags: Vec<i64> = (0..25).collect();
    let msg = validate(&validator(), &json!({"order_id": 1, "tags": tags})).unwrap();
    assert_eq!(msg.matches("is not of type").count(), 10, "{msg}");
    assert!(msg.ends_with(" (and 15 more)"), "{msg}");
}

#[test]
fn json_values_become_sqlite_values() {
    assert_eq!(to_sql_value(&json!(null)), SqlValue::Null);
    assert_eq!(to_sql_value(&json!(true)), SqlValue::Integer(1));
    assert_eq!(to_sql_value(&json!(false)), SqlValue::Integer(0));
    assert_eq!(to_sql_value(&json!(-42)), SqlValue::Integer(-42));
    assert_eq!(to_sql_value(&json!(2.5)), SqlValue::Real(2.5));
    assert_eq!(
        to_sql_value(&json!(u64::MAX)),
        SqlValue::Real(u64::MAX as f64)
    );
    assert_eq!(
        to_sql_value(&json!("'; DROP TABLE orders; --")),
        SqlValue::Text("'; DROP TABLE orders; --".into())
    );
    assert_eq!(
        to_sql_value(&json!({"a": [1, "x"]})),
        SqlValue::Text(r#"{"a":[1,"x"]}"#.into())
    );
}

#[test]
fn absent_properties_bind_as_null() {
    let params = [
        Param {
            index: 1,
            property: "order_id".into(),
        },
        Param {
            index: 2,
            property: "status".into(),
        },
    ];
    assert_eq!(
        bindings(&params, &json!({"order_id": 9})),
        vec![(1, SqlValue::Integer(9)), (2, SqlValue::Null)]
    );
}
