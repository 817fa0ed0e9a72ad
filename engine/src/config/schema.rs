//! JSON Schemas of the settings file and of a pipeline file, for editors
//! (`sluice schema`).
//!
//! They are derived (`schemars`) from the same raw shapes that `compile`
//! deserializes, so a key added, renamed or removed there changes the
//! schema too; defaults and allowed values name the constants `compile`
//! uses. The schema checks shape only (keys, types, ranges, allowed
//! words); `sluice check` does the rest (references between files,
//! recordings, queries, ...).

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::Value;

use super::{RawPipeline, RawSettings, Spanned};

/// The file names `sluice schema --out DIR` writes, and that the shipped
/// files' `yaml-language-server` comments point at.
pub const SETTINGS_SCHEMA_FILE: &str = "settings.schema.json";
pub const PIPELINE_SCHEMA_FILE: &str = "pipeline.schema.json";

/// The schema of `settings.yaml`.
pub fn settings() -> Value {
    root::<RawSettings>(
        "Sluice settings (settings.yaml)",
        "Providers, prices, budgets, keys, databases, the ledger and the \
         server settings shared by every pipeline of a directory. Unknown \
         keys are errors. Relative paths are relative to this file.",
    )
}

/// The schema of one pipeline file.
pub fn pipeline() -> Value {
    root::<RawPipeline>(
        "Sluice pipeline",
        "One pipeline, served as POST /v1/pipelines/{name} and as the model \
         {name} of /v1/chat/completions and /v1/messages. Unknown keys are \
         errors.",
    )
}

/// A schema as written to a file: pretty JSON and a final newline.
pub fn to_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

fn root<T: JsonSchema>(title: &str, description: &str) -> Value {
    let generator = SchemaGenerator::new(SchemaSettings::draft2020_12());
    let mut schema = generator.into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    schema.insert("description".into(), description.into());
    schema.to_value()
}

/// A positioned value has the schema of its value.
impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// What `compile` reads as a duration (`humantime`): numbers with units,
/// e.g. `250ms`, `1.5s`, `2m`, `1h 30m`, or a bare `0` (which only `pace`
/// accepts: other durations must be longer than zero). The pattern
/// follows humantime's grammar but accepts any unit word; `sluice check`
/// names a unit it does not know.
pub(crate) struct Duration;

/// humantime's grammar, any unit word.
pub(crate) const DURATION_PATTERN: &str = r"^\s*(0|([0-9][0-9\s]*(\.[0-9\s]*)?[A-Za-zµ]+\s*)+)\s*$";

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"const": 0},
            ],
            "description": "A duration: numbers with units (ms, s, m, h, d), e.g. 250ms, 1.5s, 2m or 1h 30m.",
            "examples": ["250ms", "10s", "2m"],
        })
    }
}

/// A duration as the schema's `default`, written as `compile` reads it.
pub(crate) fn duration_text(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// One of the request parameters a pipeline may let clients set.
pub(crate) struct ClientParam;

impl JsonSchema for ClientParam {
    fn schema_name() -> Cow<'static, str> {
        "ClientParam".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "enum": crate::compile::clients::PARAMS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(schema: &'a Value, pointer: &str) -> &'a Value {
        schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in {schema:#}"))
    }

    #[test]
    fn defaults_come_from_the_constants_compile_uses() {
        let s = settings();
        assert_eq!(
            at(&s, "/$defs/RawServer/properties/keepalive/default"),
            "15s"
        );
        assert_eq!(
            at(&s, "/properties/storage/default"),
            crate::compile::DEFAULT_STORAGE
        );
        let p = pipeline();
        assert_eq!(at(&p, "/$defs/RawTimeouts/properties/total/default"), "5m");
    }

    #[test]
    fn the_duration_pattern_takes_what_humantime_takes() {
        let pattern = fancy_regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "250ms", "10s", "2m", "1h 30m", "1h30m", "1.5s", " 10s ", "0", "0s", "2 days",
        ] {
            assert!(humantime::parse_duration(text.trim()).is_ok(), "{text}");
            assert!(pattern.is_match(text).unwrap(), "{text}");
        }
        for text in [
            "10",
            "ten seconds",
            "30 seconds please",
            "",
            "s",
            "-1s",
            "1,5s",
        ] {
            assert!(humantime::parse_duration(text.trim()).is_err(), "{text}");
            assert!(!pattern.is_match(text).unwrap(), "{text}");
        }
    }

    #[test]
    fn doc_comments_become_descriptions() {
        let p = pipeline();
        let d = at(
            &p,
            "/$defs/RawLimits/properties/max_tool_rounds/description",
        );
        assert!(d.as_str().unwrap().contains("ask for tools"), "{d}");
    }

    #[test]
    fn unknown_keys_are_refused_everywhere() {
        // Every object the schema describes is closed, as compile's
        // shapes are (`deny_unknown_fields`), except a tool's parameters
        // (a JSON Schema of its own).
        for schema in [settings(), pipeline()] {
            for (name, def) in at(&schema, "/$defs").as_object().unwrap() {
                if def.get("properties").is_some() {
                    assert_eq!(def["additionalProperties"], false, "{name}");
                }
            }
            assert_eq!(schema["additionalProperties"], false);
        }
    }
}
