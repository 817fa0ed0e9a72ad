//! Tools: fixed SQL queries that a model may call with arguments.
//!
//! A tool is declared in a pipeline file (name, description, a JSON Schema
//! of its parameters, and a query on a database declared in
//! `settings.yaml`). The life of a call:
//!
//! 1. compile ([`compile_tool`]): the schema is compiled once, the query is
//!    prepared against its database, and each named parameter (`:order_id`)
//!    is matched to a schema property. Nothing invalid gets this far.
//! 2. call ([`Tool::call`]): the argument text is size- and depth-checked,
//!    parsed and validated; invalid arguments go back to the model as an
//!    error it can correct, and SQLite is never reached. Valid values are
//!    *bound* to the prepared query (no SQL is ever built from arguments) and
//!    run on a pooled connection in a blocking thread, under the tool's
//!    timeout, with rows capped in count and bytes.
//!
//! Files: `config` (raw shapes and compilation), `args` (argument checks and
//! binding values), `authorizer` (what tool SQL may do, enforced by SQLite
//! on every connection at compile and at run time), `database` (seeding,
//! pool, query inspection, rows to JSON), `exec` (the blocking run under a
//! timeout).

mod args;
mod authorizer;
mod config;
mod database;
mod exec;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

pub use config::{
    Databases, RawDatabase, RawSql, RawTool, check_unique, compile_tool, open_databases,
    valid_tool_name,
};
pub use database::Database;

/// Argument text longer than this is refused before parsing.
pub const MAX_ARGUMENT_BYTES: usize = 64 * 1024;
/// Arrays and objects nested deeper than this are refused before parsing.
pub const MAX_ARGUMENT_DEPTH: usize = 32;
/// Rows returned at most when a tool does not say.
pub const DEFAULT_MAX_ROWS: usize = 50;
/// Bytes of serialized rows at most when a tool does not say.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
/// How long a query may run when a tool does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A named query parameter and the schema property it is bound from.
#[derive(Debug, Clone)]
pub(crate) struct Param {
    /// 1-based SQLite parameter index.
    pub index: usize,
    pub property: String,
}

/// A compiled tool: its schema validator, its database and its query, all
/// checked against each other.
pub struct Tool {
    pub(crate) name: String,
    pub(crate) description: String,
    pub(crate) parameters: Value,
    pub(crate) validator: jsonschema::Validator,
    pub(crate) database: Arc<Database>,
    pub(crate) query: Arc<str>,
    pub(crate) params: Arc<[Param]>,
    pub(crate) max_rows: usize,
    pub(crate) max_bytes: usize,
    pub(crate) timeout: Duration,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("database", &self.database.name())
            .field("query", &self.query)
            .field("max_rows", &self.max_rows)
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The result of one call, ready to go back to the model as `content`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolOutcome {
    /// The query ran and its rows are in `content`.
    pub ok: bool,
    /// What the model reads: `{"rows": [...], "row_count": n, "truncated": b}`
    /// on success, `{"error": "..."}` otherwise.
    pub content: Value,
    /// Rows in `content`.
    pub rows: usize,
    /// More rows existed than `max_rows` or `max_bytes` let through.
    pub truncated: bool,
    /// The error message, also in `content`.
    pub error: Option<String>,
}

impl ToolOutcome {
    fn failure(message: String) -> Self {
        Self {
            ok: false,
            content: json!({ "error": message }),
            rows: 0,
            truncated: false,
            error: Some(message),
        }
    }

    fn success(rows: Vec<Value>, truncated: bool) -> Self {
        let count = rows.len();
        Self {
            ok: true,
            content: json!({ "rows": rows, "row_count": count, "truncated": truncated }),
            rows: count,
            truncated,
            error: None,
        }
    }
}

impl Tool {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> &str {
        &self.description
    }

    /// The JSON Schema of the arguments, as declared.
    pub fn parameters(&self) -> &Value {
        &self.parameters
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `{name, description, parameters}`: what providers are told the model
    /// may call. Each provider wraps it in its own envelope.
    pub fn definition(&self) -> Value {
        json!({
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        })
    }

    /// Parses and validates the model's argument text without running
    /// anything: the validated object, or the message for the model.
    pub fn check_arguments(&self, arguments: &str) -> Result<Value, String> {
        let args = args::parse(arguments)?;
        if let Some(msg) = args::validate(&self.validator, &args) {
            return Err(msg);
        }
        // The schema is `type: object`, so this only guards against a
        // validator that would let something else through.
        if !args.is_object() {
            return Err("arguments must be a JSON object".into());
        }
        Ok(args)
    }

    /// Runs the tool with the model's argument text. Never panics and never
    /// fails: every problem is an outcome with `ok: false` and a message the
    /// model can act on. Arguments that are not valid never reach SQLite.
    pub async fn call(&self, arguments: &str) -> ToolOutcome {
        let args = match self.check_arguments(arguments) {
            Ok(v) => v,
            Err(msg) => return ToolOutcome::failure(msg),
        };
        let bindings = args::bindings(&self.params, &args);
        match exec::run(self, bindings).await {
            Ok(rows) => ToolOutcome::success(rows.rows, rows.truncated),
            Err(msg) => ToolOutcome::failure(msg),
        }
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
