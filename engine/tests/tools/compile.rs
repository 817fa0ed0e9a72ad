//! Compile-time rejections, each with its position and message, and the
//! database checks of `open_databases`.

use super::*;

/// A parameters schema with one required integer, `order_id`.
const ORDER_ID: &str =
    "{type: object, properties: {order_id: {type: integer}}, required: [order_id]}";

/// A tool in YAML. Positions: name 1:7, parameters 3:13, database 5:13,
/// query 6:10, the first `extra` line 7 (values of `sql` keys at column 13
/// for `max_rows`, 12 for `timeout`, 14 for `max_bytes`).
fn tool(name: &str, parameters: &str, database: &str, query: &str, extra: &str) -> String {
    format!(
        "name: {name}\ndescription: test tool\nparameters: {parameters}\nsql:\n  database: {database}\n  query: {query}\n{extra}"
    )
}

fn lookup(query: &str) -> String {
    tool("t", ORDER_ID, "shop", query, "")
}

/// Compiles `yaml` on a fresh shop and returns its diagnostics, which must
/// be errors, and no tool.
fn rejected(yaml: &str) -> Vec<(u32, u32, String)> {
    let shop = Shop::new();
    let (tool, diags) = shop.compile(yaml);
    assert!(tool.is_none(), "compiled despite {diags:?}");
    assert!(diags.iter().all(|d| d.is_error()));
    summary(&diags)
}

fn one_error(line: u32, col: u32, message: &str) -> Vec<(u32, u32, String)> {
    vec![(line, col, message.to_string())]
}

#[test]
fn the_reference_tool_compiles() {
    let shop = Shop::new();
    assert!(shop.diags.is_empty(), "{:?}", shop.diags);
    let tool = shop.tool(LOOKUP_ORDER);
    assert_eq!(tool.name(), "lookup_order");
    assert_eq!(tool.max_rows(), 20);
    assert_eq!(tool.max_bytes(), 64 * 1024);
    assert_eq!(tool.timeout(), std::time::Duration::from_secs(2));
    assert_eq!(tool.database().name(), "shop");
    assert!(tool.database().read_only());
    assert_eq!(
        tool.definition(),
        serde_json::json!({
            "name": "lookup_order",
            "description": "Look up one order by its id",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "integer", "minimum": 1}},
                "required": ["order_id"],
                "additionalProperties": false
            }
        })
    );
}

#[test]
fn a_schema_that_is_not_json_schema() {
    let yaml = tool(
        "t",
        "{type: object, properties: {order_id: {type: integr}}}",
        "shop",
        "SELECT :order_id",
        "",
    );
    let errors = rejected(&yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let (line, col, msg) = &errors[0];
    assert_eq!((*line, *col), (3, 13));
    assert!(
        msg.starts_with(
            "parameters of tool \"t\" are not a valid JSON Schema at /properties/order_id/type: "
        ),
        "{msg}"
    );
    let yaml = tool(
        "t",
        "{type: object, minProperties: -1}",
        "shop",
        "SELECT 1",
        "",
    );
    let (_, _, msg) = &rejected(&yaml)[0];
    assert!(msg.contains("at /minProperties: "), "{msg}");
}

#[test]
fn a_schema_that_refers_outside_itself() {
    // Remote references are never fetched (the HTTP resolver is not built
    // in): a schema must be complete where it is written.
    let yaml = tool(
        "t",
        "{type: object, properties: {a: {$ref: 'https://example.com/a.json'}}}",
        "shop",
        "SELECT :a",
        "",
    );
    let errors = rejected(&yaml);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0, errors[0].1), (3, 13));
    assert!(
        errors[0]
            .2
            .starts_with("parameters of tool \"t\" are not a valid JSON Schema"),
        "{}",
        errors[0].2
    );
    // A local reference is fine.
    Shop::new().tool(&tool(
        "t",
        "{type: object, $defs: {id: {type: integer}}, properties: {a: {$ref: '#/$defs/id'}}}",
        "shop",
        "SELECT :a",
        "",
    ));
}

#[test]
fn a_schema_that_is_not_an_object() {
    for (schema, found) in [
        ("{type: array, items: {type: integer}}", "type: \"array\""),
        ("{properties: {order_id: {type: integer}}}", "no type"),
        ("{type: [object, 'null']}", "type: [\"object\",\"null\"]"),
    ] {
        assert_eq!(
            rejected(&tool("t", schema, "shop", "SELECT 1", "")),
            one_error(
                3,
                13,
                &format!(
                    "parameters of tool \"t\" must be a schema with type: object (providers accept no other), found {found}"
                )
            ),
            "{schema}"
        );
    }
}

#[test]
fn a_query_on_an_unknown_table_or_column() {
    assert_eq!(
        rejected(&lookup("SELECT id FROM ordrs WHERE id = :order_id")),
        one_error(
            6,
            10,
            "query of tool \"t\" does not prepare against database \"shop\": no such table: ordrs"
        )
    );
    assert_eq!(
        rejected(&lookup("SELECT id, totl FROM orders WHERE id = :order_id")),
        one_error(
            6,
            10,
            "query of tool \"t\" does not prepare against database \"shop\": no such column: totl"
        )
    );
    assert_eq!(
        rejected(&lookup("SELEC id FROM orders WHERE id = :order_id")),
        one_error(
            6,
            10,
            "query of tool \"t\" does not prepare against database \"shop\": near \"SELEC\": syntax error"
        )
    );
}

#[test]
fn more_than_one_statement() {
    let expected = one_error(6, 10, "query of tool \"t\" must be a single statement");
    assert_eq!(rejected(&lookup("'SELECT :order_id; SELECT 2'")), expected);
    assert_eq!(
        rejected(&lookup("'SELECT :order_id; DROP TABLE orders'")),
        expected
    );
    // A trailing comment is not a statement.
    let shop = Shop::new();
    shop.tool(&lookup("'SELECT :order_id AS id; -- the id back'"));
    shop.tool(&lookup("'SELECT :order_id AS id;'"));
}

#[test]
fn an_empty_query() {
    assert_eq!(
        rejected(&tool("t", "{type: object}", "shop", "'-- nothing'", "")),
        one_error(6, 10, "query of tool \"t\" is empty")
    );
}

#[test]
fn a_write_on_a_read_only_database() {
    for query in [
        "DELETE FROM orders WHERE id = :order_id",
        "UPDATE orders SET status = 'paid' WHERE id = :order_id",
        "INSERT INTO orders (customer_id, status, total_cents, created_at) VALUES (:order_id, 'paid', 0, '')",
    ] {
        assert_eq!(
            rejected(&lookup(query)),
            one_error(6, 10, "tool \"t\" writes to read-only database \"shop\""),
            "{query}"
        );
    }
}

#[test]
fn a_write_on_a_read_write_database_compiles() {
    let shop = Shop::with_settings(
        "databases:\n  shop: {path: shop.db, seed: seed.sql, read_only: false}\n",
    );
    let tool = shop.tool(&tool(
        "t",
        ORDER_ID,
        "shop",
        "UPDATE orders SET status = 'paid' WHERE id = :order_id RETURNING id, status",
        "",
    ));
    assert!(!tool.database().read_only());
}

#[test]
fn a_parameter_the_schema_does_not_declare() {
    for (written, property, hint) in [
        (":order", "order", " (did you mean \"order_id\"?)"),
        ("@order_idd", "order_idd", " (did you mean \"order_id\"?)"),
        ("$customer", "customer", ""),
    ] {
        assert_eq!(
            rejected(&lookup(&format!(
                "SELECT id FROM orders WHERE id = :order_id OR id = {written}"
            ))),
            one_error(
                6,
                10,
                &format!(
                    "query of tool \"t\" uses parameter \"{written}\", but the parameters schema declares no property \"{property}\"{hint}"
                )
            ),
        );
    }
}

#[test]
fn all_three_parameter_prefixes_bind() {
    let shop = Shop::new();
    for written in [":order_id", "@order_id", "$order_id"] {
        shop.tool(&lookup(&format!(
            "SELECT id FROM orders WHERE id = {written}"
        )));
    }
}

#[test]
fn a_required_property_the_query_never_uses() {
    let schema = "{type: object, properties: {order_id: {type: integer}, status: {type: string}}, required: [order_id, status]}";
    assert_eq!(
        rejected(&tool(
            "t",
            schema,
            "shop",
            "SELECT id FROM orders WHERE id = :order_id",
            ""
        )),
        one_error(
            3,
            13,
            "required property \"status\" of tool \"t\" is never used by its query"
        )
    );
    // An optional property may go unused.
    let schema = "{type: object, properties: {order_id: {type: integer}, status: {type: string}}, required: [order_id]}";
    Shop::new().tool(&tool(
        "t",
        schema,
        "shop",
        "SELECT id FROM orders WHERE id = :order_id",
        "",
    ));
}

#[test]
fn a_positional_parameter() {
    assert_eq!(
        rejected(&lookup(
            "SELECT id FROM orders WHERE id = :order_id OR id = ?"
        )),
        one_error(
            6,
            10,
            "query of tool \"t\" uses positional parameter \"?\"; name each parameter after a schema property, such as :order_id"
        )
    );
    assert_eq!(
        rejected(&lookup(
            "SELECT id FROM orders WHERE id = :order_id OR id = ?3"
        )),
        one_error(
            6,
            10,
            "query of tool \"t\" uses positional parameter \"?3\"; name each parameter after a schema property, such as :order_id"
        )
    );
}

#[test]
fn two_columns_with_one_name() {
    assert_eq!(
        rejected(&lookup(
            "SELECT o.id, c.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.id = :order_id"
        )),
        one_error(
            6,
            10,
            "query of tool \"t\" returns two columns named \"id\"; rename one with AS so that each row is an object"
        )
    );
}

#[test]
fn names_providers_would_refuse() {
    let long = "a".repeat(65);
    for name in ["lookup.order", "'lookup order'", "'é'", "''", long.as_str()] {
        let shown = name.trim_matches('\'');
        assert_eq!(
            rejected(&tool(name, ORDER_ID, "shop", "SELECT :order_id", "")),
            one_error(
                1,
                7,
                &format!(
                    "invalid tool name \"{shown}\", expected 1 to 64 letters, digits, '_' or '-' (providers refuse other names)"
                )
            ),
            "{name}"
        );
    }
    let shop = Shop::new();
    shop.tool(&tool(
        &"a".repeat(64),
        ORDER_ID,
        "shop",
        "SELECT :order_id",
        "",
    ));
    shop.tool(&tool(
        "Get-Order_2",
        ORDER_ID,
        "shop",
        "SELECT :order_id",
        "",
    ));
}

#[test]
fn an_unknown_database() {
    assert_eq!(
        rejected(&tool("t", ORDER_ID, "shpo", "SELECT :order_id", "")),
        one_error(
            5,
            13,
            "tool \"t\" uses unknown database \"shpo\" (did you mean \"shop\"?); declared databases: \"shop\""
        )
    );
    assert_eq!(
        rejected(&tool("t", ORDER_ID, "ledger", "SELECT :order_id", "")),
        one_error(
            5,
            13,
            "tool \"t\" uses unknown database \"ledger\"; declared databases: \"shop\""
        )
    );
    let none = Shop::with_settings("databases: {}\n");
    let (tool, diags) = none.compile(&tool("t", ORDER_ID, "shop", "SELECT :order_id", ""));
    assert!(tool.is_none());
    assert_eq!(
        summary(&diags),
        one_error(
            5,
            13,
            "tool \"t\" uses unknown database \"shop\"; no database is declared in settings.yaml"
        )
    );
}

#[test]
fn a_database_that_failed_to_open_is_not_also_unknown() {
    let shop = Shop::with_settings("databases:\n  shop: {path: missing.db}\n");
    assert_eq!(shop.diags.len(), 1);
    let (tool, diags) = shop.compile(&tool("t", ORDER_ID, "shop", "SELECT :order_id", ""));
    assert!(tool.is_none());
    assert_eq!(diags, vec![]);
}

#[test]
fn limits_out_of_range() {
    let cases = [
        (
            "  max_rows: 0\n",
            7,
            13,
            "max_rows of tool \"t\" must be at least 1",
        ),
        (
            "  max_bytes: 0\n",
            7,
            14,
            "max_bytes of tool \"t\" must be at least 1",
        ),
        (
            "  timeout: 0s\n",
            7,
            12,
            "timeout of tool \"t\" must be longer than zero",
        ),
        (
            "  timeout: fast\n",
            7,
            12,
            "invalid duration \"fast\" for timeout of tool \"t\", expected a number and a unit such as 250ms or 2s",
        ),
    ];
    for (extra, line, col, msg) in cases {
        assert_eq!(
            rejected(&tool("t", ORDER_ID, "shop", "SELECT :order_id", extra)),
            one_error(line, col, msg),
            "{extra}"
        );
    }
}

#[test]
fn every_problem_of_a_tool_is_reported_at_once() {
    let schema = "{type: object, properties: {order_id: {type: integer}, note: {type: string}}, required: [order_id, note]}";
    let yaml = tool(
        "bad name",
        schema,
        "shop",
        "DELETE FROM orders WHERE id = :order_id OR id = :nope",
        "  max_rows: 0\n  timeout: soon\n",
    );
    let errors = rejected(&yaml);
    let places: Vec<(u32, u32)> = errors.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(
        places,
        [(1, 7), (7, 13), (8, 12), (6, 10), (6, 10), (3, 13)],
        "{errors:#?}"
    );
    assert!(errors[3].2.contains("writes to read-only database"));
    assert!(errors[4].2.contains("\":nope\""));
    assert!(errors[5].2.contains("\"note\""));
}

#[test]
fn unknown_keys_are_noted_with_a_suggestion() {
    let yaml = format!("{}  max_row: 5\n", lookup("SELECT :order_id"));
    let node = parse(&yaml).unwrap();
    let (_, notes) = from_node::<RawTool>(&node);
    assert_eq!(notes.len(), 1);
    assert_eq!(at(notes[0].pos), (7, 3));
    assert!(
        notes[0].message.starts_with("unknown field \"max_row\""),
        "{}",
        notes[0].message
    );
    assert!(
        notes[0].message.ends_with("(did you mean \"max_rows\"?)"),
        "{}",
        notes[0].message
    );
}

#[test]
fn duplicate_tool_names_are_reported_at_the_second() {
    let tools: Vec<RawTool> = from_yaml(&format!(
        "- {}\n- {}\n- {}",
        tool("a", ORDER_ID, "shop", "SELECT :order_id", "")
            .replace('\n', "\n  ")
            .trim_end(),
        tool("b", ORDER_ID, "shop", "SELECT :order_id", "")
            .replace('\n', "\n  ")
            .trim_end(),
        tool("a", ORDER_ID, "shop", "SELECT :order_id", "")
            .replace('\n', "\n  ")
            .trim_end(),
    ));
    let mut diags = Vec::new();
    sluice::tools::check_unique(&tools, &pipeline_file(), &mut diags);
    assert_eq!(
        summary(&diags),
        one_error(13, 9, "tool \"a\" is already declared at line 1, column 9")
    );
}

// ---- databases ----

fn settings_summary(diags: &[Diagnostic]) -> Vec<(u32, u32, String)> {
    diags
        .iter()
        .map(|d| {
            assert_eq!(d.file, settings_file());
            (d.pos.line, d.pos.col, d.message.clone())
        })
        .collect()
}

#[test]
fn a_database_is_created_from_its_seed_once() {
    let shop = Shop::new();
    assert!(shop.db_path().is_file());
    let before = shop.db_bytes();
    // Opening again must not run the seed a second time (it would fail on
    // CREATE TABLE) nor change the file.
    let again = Shop::open_in(
        shop.dir.clone(),
        "databases:\n  shop: {path: shop.db, seed: seed.sql}\n",
    );
    assert!(again.diags.is_empty(), "{:?}", again.diags);
    assert_eq!(shop.db_bytes(), before);
    std::mem::forget(again); // `shop` removes the directory.
}

#[test]
fn a_missing_database_without_seed() {
    let shop = Shop::with_settings("databases:\n  shop: {path: data/shop.db}\n");
    assert_eq!(
        settings_summary(&shop.diags),
        one_error(
            2,
            16,
            "database file \"data/shop.db\" does not exist (paths are relative to settings.yaml); add a seed to create it"
        )
    );
    assert!(shop.dbs.get("shop").is_none());
}

#[test]
fn a_seed_that_fails_reports_sqlite_and_leaves_no_file() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("bad.sql"),
        "CREATE TABLE a (x);\nINSERT INTO b VALUES (1);\n",
    )
    .unwrap();
    let shop = Shop::open_in(
        dir,
        "databases:\n  shop:\n    path: shop.db\n    seed: bad.sql\n",
    );
    assert_eq!(
        settings_summary(&shop.diags),
        one_error(
            4,
            11,
            "seed \"bad.sql\" of database \"shop\" failed: no such table: b"
        )
    );
    assert!(!shop.db_path().exists());
    assert_eq!(std::fs::read_dir(&shop.dir).unwrap().count(), 1);
}

#[test]
fn a_seed_file_that_cannot_be_read() {
    let shop = Shop::with_settings("databases:\n  shop: {path: shop.db, seed: nope.sql}\n");
    let errors = settings_summary(&shop.diags);
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].0, errors[0].1), (2, 31));
    assert!(
        errors[0]
            .2
            .starts_with("cannot read seed file \"nope.sql\" of database \"shop\": "),
        "{}",
        errors[0].2
    );
}

#[test]
fn a_file_that_is_not_a_database() {
    let dir = temp_dir();
    std::fs::write(
        dir.join("shop.db"),
        "not sqlite at all, but long enough to have a header".repeat(100),
    )
    .unwrap();
    let shop = Shop::open_in(dir, "databases:\n  shop: {path: shop.db}\n");
    assert_eq!(
        settings_summary(&shop.diags),
        one_error(
            2,
            16,
            "cannot open database \"shop\" at \"shop.db\": file is not a database"
        )
    );
}
