//! The tools module from the outside: compiling tools from YAML (every
//! rejection with its position and message), calls that return rows,
//! hostile arguments that must never reach or change the database, a
//! property test of "validated means executed, rejected means not", timeouts,
//! a missing or locked database, and row/byte caps.
//!
//! Every test builds its own database from `fixtures/shop/seed.sql` in a
//! fresh temporary directory.

// A test crate's root finds its modules beside it; these live in `tools/`
// so that cargo does not take them for test crates of their own.
#[path = "tools/calls.rs"]
mod calls;
#[path = "tools/compile.rs"]
mod compile;
#[path = "tools/hostile.rs"]
mod hostile;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use sluice::config::node::{from_node, parse};
use sluice::config::{Diagnostic, Pos, Spanned};
use sluice::tools::{Databases, RawDatabase, RawTool, Tool, compile_tool, open_databases};

const SEED: &str = include_str!("../../fixtures/shop/seed.sql");

/// The `databases:` part of a settings file.
#[derive(Deserialize)]
struct Settings {
    databases: BTreeMap<Spanned<String>, RawDatabase>,
}

/// A temporary directory holding `seed.sql`, the shop database built from
/// it, and the compiled databases; removed on drop.
struct Shop {
    dir: PathBuf,
    dbs: Databases,
    diags: Vec<Diagnostic>,
}

impl Shop {
    /// The shop database, read-only, as settings would declare it.
    fn new() -> Shop {
        Shop::with_settings("databases:\n  shop: {path: shop.db, seed: seed.sql}\n")
    }

    /// Opens the databases declared in `settings` (YAML), in a fresh
    /// directory that holds `seed.sql`.
    fn with_settings(settings: &str) -> Shop {
        let dir = temp_dir();
        std::fs::write(dir.join("seed.sql"), SEED).unwrap();
        Shop::open_in(dir, settings)
    }

    fn open_in(dir: PathBuf, settings: &str) -> Shop {
        let settings: Settings = from_yaml(settings);
        let mut diags = Vec::new();
        let dbs = open_databases(&dir, &settings.databases, &settings_file(), &mut diags);
        Shop { dir, dbs, diags }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.join("shop.db")
    }

    fn db_bytes(&self) -> Vec<u8> {
        std::fs::read(self.db_path()).unwrap()
    }

    /// Compiles one tool written in YAML.
    fn compile(&self, yaml: &str) -> (Option<Tool>, Vec<Diagnostic>) {
        let raw: RawTool = from_yaml(yaml);
        let mut diags = Vec::new();
        let tool = compile_tool(&raw, &self.dbs, &pipeline_file(), &mut diags);
        (tool, diags)
    }

    /// Compiles a tool that must be valid.
    fn tool(&self, yaml: &str) -> Tool {
        match self.compile(yaml) {
            (Some(tool), diags) if diags.is_empty() => tool,
            (_, diags) => panic!("tool does not compile: {diags:#?}"),
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-tools-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings_file() -> PathBuf {
    PathBuf::from("pipelines/settings.yaml")
}

fn pipeline_file() -> PathBuf {
    PathBuf::from("pipelines/support.yaml")
}

/// Parses YAML into a raw shape; unknown keys or shape errors fail the test.
fn from_yaml<T: for<'a> Deserialize<'a>>(yaml: &str) -> T {
    let node = parse(yaml).unwrap();
    let (result, notes) = from_node::<T>(&node);
    assert!(notes.is_empty(), "{notes:?}");
    result.unwrap_or_else(|e| panic!("{e:?}"))
}

/// `(line, col, message)` of each diagnostic, for compact assertions.
fn summary(diags: &[Diagnostic]) -> Vec<(u32, u32, String)> {
    diags
        .iter()
        .map(|d| {
            assert_eq!(d.file, pipeline_file().as_path().to_path_buf());
            (d.pos.line, d.pos.col, d.message.clone())
        })
        .collect()
}

fn at(pos: Pos) -> (u32, u32) {
    (pos.line, pos.col)
}

/// The reference tool of the spec.
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

/// A tool that takes a free-form string.
const ORDERS_BY_STATUS: &str = "\
name: orders_by_status
description: List orders with a status
parameters:
  type: object
  properties: {status: {type: string, maxLength: 40}}
  required: [status]
sql:
  database: shop
  query: SELECT id, status FROM orders WHERE status = :status ORDER BY id
";
