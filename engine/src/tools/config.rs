//! Tool configuration: the raw shapes written in YAML and their compilation
//! into [`Tool`]s and [`Database`]s, reporting every problem with the
//! position of the value at fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::authorizer::Refusal;
use super::database::{self, Database, InspectError};
use super::{DEFAULT_MAX_BYTES, DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, Param, Tool};
use crate::config::diag::suggest;
use crate::config::{Diagnostic, Pos, SETTINGS_FILE, Spanned};

/// A database declared in `settings.yaml` under `databases: {NAME: ...}`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// The SQLite file, relative to the settings file's folder.
    pub path: Spanned<String>,
    /// Open read-only, or read-write (tools may write rows, never the schema).
    #[schemars(extend("default" = true))]
    pub read_only: Option<bool>,
    /// An SQL file, relative to the settings file's folder, run to create the
    /// database when `path` does not exist. Never run on an existing file.
    pub seed: Option<Spanned<String>>,
}

/// One entry of a pipeline's `tools:` list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTool {
    /// The name the model calls it by.
    #[schemars(regex(pattern = r"^[a-zA-Z0-9_-]{1,64}$"))]
    pub name: Spanned<String>,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema (draft 2020-12) of the arguments; must be `type: object`.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub parameters: Spanned<Value>,
    /// The query it runs.
    pub sql: RawSql,
}

/// A fixed query; the model's arguments are only ever bound parameters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSql {
    /// A database declared under `databases` in settings.yaml.
    pub database: Spanned<String>,
    /// One statement; `:name`, `@name` or `$name` parameters are bound from
    /// the schema's properties of the same name.
    pub query: Spanned<String>,
    /// Rows returned at most (`truncated: true` when capped).
    #[schemars(range(min = 1), extend("default" = DEFAULT_MAX_ROWS))]
    pub max_rows: Option<Spanned<u32>>,
    /// How long the query may run.
    #[schemars(with = "Option<crate::config::schema::Duration>")]
    #[schemars(extend("default" = crate::config::schema::duration_text(DEFAULT_TIMEOUT)))]
    pub timeout: Option<Spanned<String>>,
    /// Serialized JSON bytes of the rows at most.
    #[schemars(range(min = 1), extend("default" = DEFAULT_MAX_BYTES))]
    pub max_bytes: Option<Spanned<u32>>,
}

/// The databases of `settings.yaml`, opened. Remembers every declared name,
/// also of databases that failed to open, so that a tool naming one of those
/// is not also told the name is unknown.
#[derive(Debug, Default)]
pub struct Databases {
    open: BTreeMap<String, Arc<Database>>,
    declared: BTreeSet<String>,
    /// The settings could not be read: any name counts as declared.
    unchecked: bool,
}

impl Databases {
    /// For when `settings.yaml` could not be read: no database is open, and
    /// tools are not told their database is undeclared.
    pub fn unchecked() -> Self {
        Self {
            unchecked: true,
            ..Self::default()
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Database>> {
        self.open.get(name)
    }

    /// The databases that opened, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Database>)> {
        self.open.iter().map(|(k, v)| (k.as_str(), v))
    }

    fn is_declared(&self, name: &str) -> bool {
        self.unchecked || self.declared.contains(name)
    }
}

/// Opens every declared database, creating it from its seed when its file
/// does not exist. Paths are relative to `base_dir` (the settings file's
/// folder); problems are reported against `file`.
pub fn open_databases(
    base_dir: &Path,
    raw: &BTreeMap<Spanned<String>, RawDatabase>,
    file: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Databases {
    let mut out = Databases::default();
    for (name, db) in raw {
        out.declared.insert(name.value.clone());
        if let Some(opened) = open_database(base_dir, name, db, file, diags) {
            out.open.insert(name.value.clone(), Arc::new(opened));
        }
    }
    out
}

fn open_database(
    base_dir: &Path,
    name: &Spanned<String>,
    raw: &RawDatabase,
    file: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<Database> {
    let mut error = |pos: Pos, msg: String| diags.push(Diagnostic::error(file, pos, msg));
    if raw.path.value.trim().is_empty() {
        error(
            raw.path.pos,
            format!("path of database \"{}\" is empty", name.value),
        );
        return None;
    }
    let path = base_dir.join(&raw.path.value);
    if !path.exists() {
        let Some(seed) = &raw.seed else {
            error(
                raw.path.pos,
                format!(
                    "database file \"{}\" does not exist (paths are relative to {SETTINGS_FILE}); add a seed to create it",
                    raw.path.value
                ),
            );
            return None;
        };
        let sql = match std::fs::read_to_string(base_dir.join(&seed.value)) {
            Ok(sql) => sql,
            Err(e) => {
                error(
                    seed.pos,
                    format!(
                        "cannot read seed file \"{}\" of database \"{}\": {e}",
                        seed.value, name.value
                    ),
                );
                return None;
            }
        };
        if let Err(msg) = database::create_from_seed(&path, &sql) {
            error(
                seed.pos,
                format!(
                    "seed \"{}\" of database \"{}\" failed: {msg}",
                    seed.value, name.value
                ),
            );
            return None;
        }
    }
    match Database::open(&name.value, &path, raw.read_only.unwrap_or(true)) {
        Ok(db) => Some(db),
        Err(msg) => {
            error(
                raw.path.pos,
                format!(
                    "cannot open database \"{}\" at \"{}\": {msg}",
                    name.value, raw.path.value
                ),
            );
            None
        }
    }
}

/// Whether providers accept `name` as a function name.
pub fn valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Compiles one tool against the open databases. Every problem is pushed to
/// `diags`; the tool is returned only when there is none.
///
/// Names must be unique within a pipeline; that needs every tool at once and
/// is checked by [`check_unique`].
pub fn compile_tool(
    raw: &RawTool,
    dbs: &Databases,
    file: &Path,
    diags: &mut Vec<Diagnostic>,
) -> Option<Tool> {
    let before = diags.len();
    let mut error = |pos: Pos, msg: String| diags.push(Diagnostic::error(file, pos, msg));
    let name = raw.name.value.as_str();
    if !valid_tool_name(name) {
        error(
            raw.name.pos,
            format!(
                "invalid tool name \"{name}\", expected 1 to 64 letters, digits, '_' or '-' (providers refuse other names)"
            ),
        );
    }

    let schema = compile_schema(raw, &mut error);

    let sql = &raw.sql;
    let max_rows = positive(
        &sql.max_rows,
        DEFAULT_MAX_ROWS,
        "max_rows",
        name,
        &mut error,
    );
    let max_bytes = positive(
        &sql.max_bytes,
        DEFAULT_MAX_BYTES,
        "max_bytes",
        name,
        &mut error,
    );
    let timeout = match &sql.timeout {
        None => Some(DEFAULT_TIMEOUT),
        Some(t) => match humantime::parse_duration(t.value.trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                error(
                    t.pos,
                    format!("timeout of tool \"{name}\" must be longer than zero"),
                );
                None
            }
            Err(_) => {
                error(
                    t.pos,
                    format!(
                        "invalid duration \"{}\" for timeout of tool \"{name}\", expected a number and a unit such as 250ms or 2s",
                        t.value
                    ),
                );
                None
            }
        },
    };

    let db_name = &sql.database;
    let db = dbs.get(&db_name.value);
    if db.is_none() && !dbs.is_declared(&db_name.value) {
        let hint = suggest(&db_name.value, dbs.declared.iter().map(String::as_str))
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        let declared = if dbs.declared.is_empty() {
            format!("no database is declared in {SETTINGS_FILE}")
        } else {
            let names: Vec<String> = dbs.declared.iter().map(|n| format!("\"{n}\"")).collect();
            format!("declared databases: {}", names.join(", "))
        };
        error(
            db_name.pos,
            format!(
                "tool \"{name}\" uses unknown database \"{}\"{hint}; {declared}",
                db_name.value
            ),
        );
    }

    let params = match db {
        Some(db) => check_query(raw, db, schema.as_ref().map(|s| &s.1), &mut error),
        None => None,
    };

    if diags.len() > before {
        return None;
    }
    let (validator, _) = schema?;
    Some(Tool {
        name: name.to_string(),
        description: raw.description.clone(),
        parameters: raw.parameters.value.clone(),
        validator,
        database: db?.clone(),
        query: Arc::from(sql.query.value.as_str()),
        params: Arc::from(params?),
        max_rows: max_rows?,
        max_bytes: max_bytes?,
        timeout: timeout?,
    })
}

/// What the checks of a query need from the schema.
struct SchemaFacts {
    /// Names of the top-level `properties`. Properties that only a `$ref`
    /// or `allOf` would add are not seen: query parameters must be declared
    /// at the top, where providers also look for them.
    properties: BTreeSet<String>,
    /// Top-level `required`.
    required: Vec<String>,
}

/// Compiles the parameters schema once, and reads its top-level properties.
fn compile_schema(
    raw: &RawTool,
    error: &mut impl FnMut(Pos, String),
) -> Option<(jsonschema::Validator, SchemaFacts)> {
    let name = &raw.name.value;
    let schema = &raw.parameters;
    let validator = match jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema.value)
    {
        Ok(v) => v,
        Err(e) => {
            let at = e.instance_path().to_string();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" at {at}")
            };
            error(
                schema.pos,
                format!("parameters of tool \"{name}\" are not a valid JSON Schema{at}: {e}"),
            );
            return None;
        }
    };
    if schema.value.get("type") != Some(&Value::String("object".into())) {
        error(
            schema.pos,
            format!(
                "parameters of tool \"{name}\" must be a schema with type: object (providers accept no other), found {}",
                match schema.value.get("type") {
                    Some(t) => format!("type: {t}"),
                    None => "no type".into(),
                }
            ),
        );
        return None;
    }
    let properties = match schema.value.get("properties") {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        _ => BTreeSet::new(),
    };
    let required = match schema.value.get("required") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    Some((
        validator,
        SchemaFacts {
            properties,
            required,
        },
    ))
}

/// Prepares the query and checks it against its database and the schema.
/// Returns the parameters to bind.
fn check_query(
    raw: &RawTool,
    db: &Database,
    schema: Option<&SchemaFacts>,
    error: &mut impl FnMut(Pos, String),
) -> Option<Vec<Param>> {
    let name = &raw.name.value;
    let query = &raw.sql.query;
    let db_name = db.name();
    let inspected = match db.with_connection(|c| database::inspect(c, &query.value)) {
        Ok(inspected) => inspected,
        Err(_) => {
            // The file vanished or broke since it was opened a moment ago.
            error(
                query.pos,
                format!(
                    "cannot check query of tool \"{name}\": database \"{db_name}\" is unavailable"
                ),
            );
            return None;
        }
    };
    let shape = match inspected {
        Ok(shape) => shape,
        Err(InspectError::Empty) => {
            error(query.pos, format!("query of tool \"{name}\" is empty"));
            return None;
        }
        Err(InspectError::MultipleStatements) => {
            error(
                query.pos,
                format!("query of tool \"{name}\" must be a single statement"),
            );
            return None;
        }
        Err(InspectError::Refused(Refusal::WriteReadOnly)) => {
            error(
                query.pos,
                format!("tool \"{name}\" writes to read-only database \"{db_name}\""),
            );
            return None;
        }
        Err(InspectError::Refused(refusal)) => {
            let allowed = if db.read_only() {
                "reads"
            } else {
                "reads and writes rows of"
            };
            error(
                query.pos,
                format!(
                    "query of tool \"{name}\" uses {refusal}, which is not allowed: a tool query only {allowed} its database \"{db_name}\""
                ),
            );
            return None;
        }
        Err(InspectError::Sqlite(msg)) => {
            error(
                query.pos,
                format!(
                    "query of tool \"{name}\" does not prepare against database \"{db_name}\": {msg}"
                ),
            );
            return None;
        }
    };
    let mut ok = true;
    if db.read_only() && !shape.readonly {
        error(
            query.pos,
            format!("tool \"{name}\" writes to read-only database \"{db_name}\""),
        );
        ok = false;
    }
    if let Some(p) = &shape.positional {
        error(
            query.pos,
            format!(
                "query of tool \"{name}\" uses positional parameter \"{p}\"; name each parameter after a schema property, such as :order_id"
            ),
        );
        ok = false;
    }
    let mut seen_columns = BTreeSet::new();
    for column in &shape.columns {
        if !seen_columns.insert(column) {
            error(
                query.pos,
                format!(
                    "query of tool \"{name}\" returns two columns named \"{column}\"; rename one with AS so that each row is an object"
                ),
            );
            ok = false;
        }
    }
    let mut params = Vec::new();
    if let Some(schema) = schema {
        for (index, written) in &shape.params {
            // SQLite keeps the prefix (`:`, `@` or `$`) in the name.
            let property = &written[1..];
            if schema.properties.contains(property) {
                params.push(Param {
                    index: *index,
                    property: property.to_string(),
                });
                continue;
            }
            let hint = suggest(property, schema.properties.iter().map(String::as_str))
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            error(
                query.pos,
                format!(
                    "query of tool \"{name}\" uses parameter \"{written}\", but the parameters schema declares no property \"{property}\"{hint}"
                ),
            );
            ok = false;
        }
        for required in &schema.required {
            if !shape.params.iter().any(|(_, w)| &w[1..] == required) {
                error(
                    raw.parameters.pos,
                    format!(
                        "required property \"{required}\" of tool \"{name}\" is never used by its query"
                    ),
                );
                ok = false;
            }
        }
    }
    ok.then_some(params)
}

/// `value` when it is above zero; the default when it is not given.
fn positive(
    value: &Option<Spanned<u32>>,
    default: usize,
    what: &str,
    tool: &str,
    error: &mut impl FnMut(Pos, String),
) -> Option<usize> {
    match value {
        None => Some(default),
        Some(v) if v.value == 0 => {
            error(
                v.pos,
                format!("{what} of tool \"{tool}\" must be at least 1"),
            );
            None
        }
        Some(v) => Some(v.value as usize),
    }
}

/// Reports every tool whose name an earlier tool of the same list already
/// has. Providers reject a request whose tools share a name.
pub fn check_unique(tools: &[RawTool], file: &Path, diags: &mut Vec<Diagnostic>) {
    let mut first: BTreeMap<&str, Pos> = BTreeMap::new();
    for tool in tools {
        let name = tool.name.value.as_str();
        match first.get(name) {
            Some(pos) => diags.push(Diagnostic::error(
                file,
                tool.name.pos,
                format!(
                    "tool \"{name}\" is already declared at line {}, column {}",
                    pos.line, pos.col
                ),
            )),
            None => {
                first.insert(name, tool.name.pos);
            }
        }
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
