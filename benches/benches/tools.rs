//! Cost of one tool call on the seeded shop database, in time per call:
//!
//! - `tools/validate/lookup_order`: parsing and schema validation of
//!   `{"order_id": 7}` alone (what every call pays before SQLite).
//! - `tools/validate/rejected`: the same for arguments the schema refuses
//!   (`{"order_id": "7"}`), including building the message for the model.
//! - `tools/call/lookup_order`: a whole call: validation, binding, the hop to
//!   a blocking thread, the query on a pooled connection, rows to JSON.
//!
//! The database is built from `fixtures/shop/seed.sql` in a temporary
//! directory. Run with `cargo bench -p sluice-benches --bench tools`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::config::Spanned;
use sluice::config::node::{from_node, parse};
use sluice::tools::{RawDatabase, RawTool, Tool, compile_tool, open_databases};

const SEED: &str = include_str!("../../fixtures/shop/seed.sql");

const LOOKUP_ORDER: &str = "\
name: lookup_order
description: Look up one order by its id
parameters:
  type: object
  properties: {order_id: {type: integer, minimum: 1}}
  required: [order_id]
  additionalProperties: false
sql:
  database: shop
  query: SELECT id, status, total_cents FROM orders WHERE id = :order_id
  max_rows: 20
";

/// A temporary directory with the shop database; removed on drop.
struct Shop {
    dir: PathBuf,
    tool: Tool,
}

impl Shop {
    fn new() -> Shop {
        let dir = std::env::temp_dir().join(format!("sluice-bench-tools-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("seed.sql"), SEED).expect("seed");
        let file = dir.join("settings.yaml");
        let node = parse("shop: {path: shop.db, seed: seed.sql}").expect("yaml");
        let (raw, _) = from_node::<BTreeMap<Spanned<String>, RawDatabase>>(&node);
        let mut diags = Vec::new();
        let dbs = open_databases(&dir, &raw.expect("databases"), &file, &mut diags);
        let node = parse(LOOKUP_ORDER).expect("yaml");
        let (raw, _) = from_node::<RawTool>(&node);
        let tool = compile_tool(&raw.expect("tool"), &dbs, &file, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        Shop {
            dir,
            tool: tool.expect("tool"),
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tools(c: &mut Criterion) {
    let shop = Shop::new();
    let tool = &shop.tool;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let outcome = rt.block_on(tool.call(r#"{"order_id": 7}"#));
    assert!(outcome.ok && outcome.rows == 1, "{outcome:?}");

    let mut group = c.benchmark_group("tools");
    group.bench_function("validate/lookup_order", |b| {
        b.iter(|| black_box(tool.check_arguments(black_box(r#"{"order_id": 7}"#))))
    });
    group.bench_function("validate/rejected", |b| {
        b.iter(|| black_box(tool.check_arguments(black_box(r#"{"order_id": "7"}"#))))
    });
    group.bench_function("call/lookup_order", |b| {
        b.iter(|| black_box(rt.block_on(tool.call(black_box(r#"{"order_id": 7}"#)))))
    });
    group.finish();
}

fn config() -> Criterion {
    // Set here, not per group, so command-line flags still override them.
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = tools
}
criterion_main!(benches);
