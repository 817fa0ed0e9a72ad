//! The editor schemas (`sluice schema`): the committed files in `schema/`
//! are what the binary generates; every shipped pipelines file, every file
//! `sluice init` writes and every file of `fixtures/invalid/` that compiles
//! without error is valid under them; and every fixture file with a
//! structural error (unknown key, wrong type, missing field, value out of
//! range or not an allowed word) is rejected by them. The fixture files
//! whose errors only `sluice check` can see are listed, each with why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::config::node;
use sluice::config::schema;

/// Fixture files with errors that the schema cannot see, and why.
/// The test checks the reasons still hold: each file here is either not
/// a YAML document or valid under its schema.
const NOT_STRUCTURAL: &[(&str, &str)] = &[
    (
        "bad_listen_address/settings.yaml",
        "an address that does not parse",
    ),
    (
        "budget_bad_downgrade/other.yaml",
        "prices compared across settings and pipeline",
    ),
    (
        "cors_any_origin_with_credentials/settings.yaml",
        "one cors setting against another",
    ),
    ("duplicate_pipeline_name/b.yaml", "names across files"),
    ("duplicate_yaml_key/pipeline.yaml", "not a YAML document"),
    (
        "first_token_longer_than_total/pipeline.yaml",
        "one duration against another",
    ),
    (
        "idle_longer_than_total/pipeline.yaml",
        "one duration against another",
    ),
    ("missing_recording/pipeline.yaml", "a recording on disk"),
    (
        "openai_with_fixtures/settings.yaml",
        "which keys apply to which provider kind",
    ),
    (
        "openai_without_base_url/settings.yaml",
        "which keys apply to which provider kind",
    ),
    (
        "recording_path_escape/pipeline.yaml",
        "a path outside the recordings directory",
    ),
    (
        "several_problems/gamma.yaml",
        "a provider declared in settings",
    ),
    (
        "timeouts_checked_despite_other_errors/pipeline.yaml",
        "a provider declared in settings; one duration against another",
    ),
    ("tool_sql_attach/pipeline.yaml", "what a query does"),
    ("tool_sql_detach/pipeline.yaml", "what a query does"),
    ("tool_sql_load_extension/pipeline.yaml", "what a query does"),
    ("tool_sql_pragma/pipeline.yaml", "what a query does"),
    ("tool_sql_read_write/pipeline.yaml", "what a query does"),
    (
        "unknown_provider/pipeline.yaml",
        "a provider declared in settings",
    ),
    ("yaml_syntax_error/pipeline.yaml", "not a YAML document"),
    ("zero_duration/pipeline.yaml", "a zero duration"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

struct Schemas {
    settings: jsonschema::Validator,
    pipeline: jsonschema::Validator,
}

impl Schemas {
    fn new() -> Schemas {
        let compile = |s: &Value| {
            jsonschema::draft202012::new(s).unwrap_or_else(|e| panic!("not a valid schema: {e}"))
        };
        Schemas {
            settings: compile(&schema::settings()),
            pipeline: compile(&schema::pipeline()),
        }
    }

    /// The validator for a file, by its name.
    fn for_file(&self, path: &Path) -> &jsonschema::Validator {
        if path.file_name().is_some_and(|n| n == "settings.yaml") {
            &self.settings
        } else {
            &self.pipeline
        }
    }

    /// `Err` when the file is not a YAML document; otherwise the schema's
    /// complaints (empty: valid).
    fn check(&self, path: &Path, text: &str) -> Result<Vec<String>, String> {
        let json = to_json(text)?;
        Ok(self
            .for_file(path)
            .iter_errors(&json)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect())
    }
}

/// YAML as `compile` reads it (the same parser), as JSON.
fn to_json(text: &str) -> Result<Value, String> {
    let node = node::parse(text).map_err(|(_, msg)| msg)?;
    let (value, _) = node::from_node::<Value>(&node);
    value.map_err(|e| e.message)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_committed_schemas_are_the_generated_ones() {
    for (name, value) in [
        (schema::SETTINGS_SCHEMA_FILE, schema::settings()),
        (schema::PIPELINE_SCHEMA_FILE, schema::pipeline()),
    ] {
        let path = root().join("schema").join(name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert!(
            committed == schema::to_text(&value),
            "{} differs from what the raw shapes generate; run `cargo run -p sluice -- schema --out schema`",
            path.display()
        );
    }
}

#[test]
fn the_binary_prints_and_writes_the_schemas() {
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let out = std::process::Command::new(sluice)
        .args(["schema", "pipeline"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, schema::pipeline());

    let out = std::process::Command::new(sluice)
        .arg("schema")
        .output()
        .unwrap();
    let both: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(both["settings"], schema::settings());
    assert_eq!(both["pipeline"], schema::pipeline());

    let dir = std::env::temp_dir().join(format!("sluice-schema-out-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let status = std::process::Command::new(sluice)
        .args(["schema", "--out", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for name in [schema::SETTINGS_SCHEMA_FILE, schema::PIPELINE_SCHEMA_FILE] {
        let written = std::fs::read_to_string(dir.join(name)).unwrap();
        let committed = std::fs::read_to_string(root().join("schema").join(name)).unwrap();
        assert_eq!(written, committed, "{name}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_shipped_pipelines_are_valid_and_name_their_schema() {
    let schemas = Schemas::new();
    let dir = root().join("pipelines");
    let files = yaml_files(&dir);
    assert!(files.len() >= 3, "{files:?}");
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let errors = schemas.check(&path, &text).unwrap();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
        let first = text.lines().next().unwrap_or_default();
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| panic!("{} starts with {first:?}", path.display()));
        let expected = if path.ends_with("settings.yaml") {
            schema::SETTINGS_SCHEMA_FILE
        } else {
            schema::PIPELINE_SCHEMA_FILE
        };
        assert_eq!(
            target,
            format!("../schema/{expected}"),
            "{}",
            path.display()
        );
        assert!(dir.join(target).is_file(), "{target}");
    }
}

#[test]
fn the_files_init_writes_are_valid() {
    let schemas = Schemas::new();
    for (name, text) in sluice::init::files() {
        if name.ends_with(".yaml") {
            let errors = schemas.check(Path::new(name), &text).unwrap();
            assert!(errors.is_empty(), "{name}: {errors:#?}");
        }
    }
}

/// Corners where a schema could easily be stricter than `compile`: a
/// bare `0` pace, fractions and compound durations, keys left empty
/// (null), whole numbers written as floats.
#[test]
fn corners_that_compile_are_valid() {
    let schemas = Schemas::new();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "providers:\n  replay: {{kind: replay, fixtures: {}/fixtures/recorded, pace: 0}}\n\
             server: {{keepalive: 1.5s, idle_timeout: 1m 30s, listen:}}\n\
             prices:\n  openai/text_stop.sse: {{input: 1, output: 2}}\n",
            root().display()
        ),
    );
    let pipeline = (
        PathBuf::from("demo.yaml"),
        "name: demo\nmodel: {provider: replay, name: openai/text_stop.sse, temperature:}\n\
         limits: {max_tokens: 256.0}\ntimeouts: {total: 2m, idle: 1m30s}\n\
         budget: {daily_usd: 1, on_exhausted:}\nclients: {system:}\n"
            .to_string(),
    );
    sluice::compile::compile_sources(&settings, std::slice::from_ref(&pipeline))
        .unwrap_or_else(|d| panic!("{d:#?}"));
    for (path, text) in [settings, pipeline] {
        let errors = schemas.check(&path, &text).unwrap();
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

/// Per fixture file (relative to `fixtures/invalid/`), whether
/// `expected.txt` names an error in it.
fn fixture_files() -> BTreeMap<String, bool> {
    let root = root().join("fixtures/invalid");
    let mut out = BTreeMap::new();
    for case in std::fs::read_dir(&root).unwrap() {
        let case = case.unwrap().path();
        if !case.is_dir() {
            continue;
        }
        let case_name = case.file_name().unwrap().to_str().unwrap().to_string();
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        for path in yaml_files(&case) {
            let file = path.file_name().unwrap().to_str().unwrap();
            let has_error = expected
                .lines()
                .any(|l| l.starts_with(&format!("{file}:")) && l.contains(": error: "));
            out.insert(format!("{case_name}/{file}"), has_error);
        }
    }
    out
}

#[test]
fn fixtures_are_accepted_or_rejected_as_compile_says() {
    let schemas = Schemas::new();
    let files = fixture_files();
    assert!(files.len() > 60, "{}", files.len());
    let listed: BTreeMap<&str, &str> = NOT_STRUCTURAL.iter().copied().collect();
    let mut wrong = Vec::new();
    let (mut valid, mut rejected) = (0, 0);
    for (file, has_error) in &files {
        let path = root().join("fixtures/invalid").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let verdict = schemas.check(&path, &text);
        match (has_error, listed.get(file.as_str()), verdict) {
            (false, Some(_), _) => wrong.push(format!("{file}: listed, but compiles without error")),
            (false, None, Ok(errors)) if errors.is_empty() => valid += 1,
            (false, None, Ok(errors)) => {
                wrong.push(format!("{file}: compiles, but the schema rejects it: {errors:?}"))
            }
            (false, None, Err(e)) => wrong.push(format!("{file}: compiles, but is not YAML: {e}")),
            (true, Some(_), Err(_)) => {}
            (true, Some(_), Ok(errors)) if errors.is_empty() => {}
            (true, Some(why), Ok(errors)) => wrong.push(format!(
                "{file}: listed as not structural ({why}), but the schema rejects it: {errors:?}; take it off the list"
            )),
            (true, None, Ok(errors)) if !errors.is_empty() => rejected += 1,
            (true, None, Ok(_)) => wrong.push(format!(
                "{file}: has an error the schema accepts; make the schema catch it or list it with a reason"
            )),
            (true, None, Err(e)) => wrong.push(format!("{file}: not YAML ({e}); list it")),
        }
    }
    for (file, _) in NOT_STRUCTURAL {
        if !files.contains_key(*file) {
            wrong.push(format!("{file}: listed, but there is no such fixture file"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The split, for the reader of the test output.
    println!(
        "{valid} valid, {rejected} rejected by the schema, {} left to sluice check",
        NOT_STRUCTURAL.len()
    );
    assert!(rejected >= 15, "{rejected}");
}
