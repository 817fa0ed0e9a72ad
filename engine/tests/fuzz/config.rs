//! The YAML loader (`config/node.rs`) and the whole compile path: random
//! but structured settings and pipeline files (every key well formed,
//! mistyped, misspelled or absent; YAML anchors, tags, block scalars,
//! nesting past any sane depth), and raw bytes. Compiling never panics,
//! and a refusal always comes with diagnostics that point into the files.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use sluice::compile::compile_sources;
use sluice::config::{Diagnostic, node};

use crate::json;

/// An empty folder for the settings file: relative paths in random
/// settings (fixtures, databases, seeds) resolve into it and find nothing.
static DIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("sluice-fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
});

/// Lines as YAML counts them: CRLF, a lone CR and LF each end one.
fn lines_of(text: &str) -> u32 {
    let breaks = text
        .replace("\r\n", "\n")
        .bytes()
        .filter(|b| *b == b'\n' || *b == b'\r')
        .count();
    breaks as u32 + 1
}

/// Checks one diagnostic against the files it may point into.
fn check_diag(d: &Diagnostic, files: &[(PathBuf, String)]) -> Result<(), TestCaseError> {
    prop_assert!(!d.message.trim().is_empty(), "empty message: {d:?}");
    prop_assert!(d.pos.line >= 1 && d.pos.col >= 1, "no position: {d}");
    if let Some((_, text)) = files.iter().find(|(p, _)| *p == d.file) {
        prop_assert!(
            d.pos.line <= lines_of(text),
            "line past the file's end: {d}"
        );
    } else {
        // Files a setting names (a seed, a database) are reported on
        // their own path, which must be under the settings' folder.
        prop_assert!(
            d.file.starts_with(&*DIR),
            "diagnostic on an unknown file: {d}"
        );
    }
    Ok(())
}

/// Compiles the files and checks what holds for any input.
pub fn check_compile(settings: &str, pipelines: &[String]) -> Result<(), TestCaseError> {
    let settings = (DIR.join("settings.yaml"), settings.to_string());
    let pipelines: Vec<(PathBuf, String)> = pipelines
        .iter()
        .enumerate()
        .map(|(i, t)| (DIR.join(format!("p{i}.yaml")), t.clone()))
        .collect();
    let mut files = pipelines.clone();
    files.push(settings.clone());
    match compile_sources(&settings, &pipelines) {
        Ok(catalog) => {
            prop_assert!(catalog.pipelines.len() <= pipelines.len());
            for w in &catalog.warnings {
                prop_assert!(!w.is_error());
                check_diag(w, &files)?;
            }
        }
        Err(diags) => {
            prop_assert!(
                diags.iter().any(Diagnostic::is_error),
                "refused without an error: {diags:?}"
            );
            for d in &diags {
                check_diag(d, &files)?;
            }
        }
    }
    Ok(())
}

/// Parses one document and checks a syntax error's position.
pub fn check_parse(text: &str) -> Result<(), TestCaseError> {
    if let Err((pos, message)) = node::parse(text) {
        prop_assert!(
            pos.line >= 1 && pos.col >= 1 && pos.line <= lines_of(text),
            "{pos:?} {message}"
        );
        prop_assert!(
            message.starts_with("invalid yaml: ") && !message.contains('\n'),
            "{message:?}"
        );
    }
    Ok(())
}

/// A YAML value for a key: a well-formed one (`good`) or anything a
/// person (or a fuzzer) might write instead.
fn value(good: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![
        6 => good,
        1 => proptest::sample::select(&[
            "~", "null", "yes", "no", "true", "0x10", "0o17", "007", "1e400", "-5", "-0", ".inf", ".nan",
            "18446744073709551616", "\"\"", "''", "[]", "{}", "[a, b]", "{a: 1}", "!!str 5", "!!binary aGk=",
            "&x 5", "*x", "|\n  block\n", ">-\n  folded\n", "\"\\u0000\"", "'it''s'", "? complex",
        ][..])
        .prop_map(str::to_string),
        1 => json::value().prop_map(|v| v.text()),
        1 => "[ -~]{0,20}",
    ]
    .boxed()
}

fn duration() -> BoxedStrategy<String> {
    value(prop_oneof![
        (
            0u64..100_000,
            proptest::sample::select(&["ms", "s", "m", "h", "d", "", "us", "ns"][..])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        Just("18446744073709551615s".to_string()),
        Just("99999999999h".to_string()),
        Just("1s 500ms".to_string()),
    ])
}

fn number() -> BoxedStrategy<String> {
    value(prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..10_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        Just("4294967296".to_string()),
    ])
}

fn name() -> BoxedStrategy<String> {
    value(prop_oneof![
        proptest::sample::select(&["mock", "replay", "openai", "claude", "demo", "chat"][..])
            .prop_map(str::to_string),
        "[a-z][a-z0-9_-]{0,10}",
        "[ -~]{0,70}",
    ])
}

/// `key: value` lines of a flow mapping, some keys misspelled, some left
/// out, and one unknown key now and then.
fn mapping(fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let entries: Vec<BoxedStrategy<Option<String>>> = fields
        .into_iter()
        .map(|(key, v)| {
            prop_oneof![
                6 => v.clone().prop_map(move |v| Some(format!("{key}: {v}"))),
                2 => Just(None),
                1 => v.prop_map(move |v| Some(format!("{}x: {v}", &key[..key.len() - 1]))),
            ]
            .boxed()
        })
        .collect();
    (entries, proptest::option::of("[a-z_]{1,8}"))
        .prop_map(|(entries, extra)| {
            let mut parts: Vec<String> = entries.into_iter().flatten().collect();
            parts.extend(extra.map(|k| format!("{k}: 1")));
            // Flow style: indentation cannot go wrong, values that are not
            // flow-safe make syntax errors, which is fine too.
            format!("{{{}}}", parts.join(", "))
        })
        .boxed()
}

fn settings() -> BoxedStrategy<String> {
    let server = mapping(vec![
        (
            "listen",
            value(prop_oneof![
                Just("127.0.0.1:0".to_string()),
                "[0-9.:]{0,22}",
                Just("[::1]:80".to_string())
            ]),
        ),
        ("max_body_bytes", number()),
        ("keepalive", duration()),
        ("shutdown_grace", duration()),
    ]);
    let provider = mapping(vec![
        (
            "kind",
            value(
                proptest::sample::select(&["openai", "anthropic", "replay", "gemini"][..])
                    .prop_map(str::to_string),
            ),
        ),
        (
            "base_url",
            value(prop_oneof![
                Just("http://127.0.0.1:9/v1".to_string()),
                Just("https://x".to_string()),
                "[ -~]{0,20}"
            ]),
        ),
        ("api_key_env", value("[A-Z_]{0,12}")),
        (
            "fixtures",
            value(prop_oneof![
                Just("recorded".to_string()),
                Just("../../etc".to_string())
            ]),
        ),
        ("pace", duration()),
    ]);
    let price = mapping(vec![
        ("input", number()),
        ("output", number()),
        ("cached_input", number()),
    ]);
    let budget = mapping(vec![
        ("daily_usd", number()),
        (
            "alert_at",
            value(proptest::collection::vec(any::<f64>(), 0..4).prop_map(|v| format!("{v:?}"))),
        ),
        (
            "on_exhausted",
            value(
                proptest::sample::select(&["reject", "downgrade", "x"][..])
                    .prop_map(str::to_string),
            ),
        ),
    ]);
    let database = mapping(vec![
        ("path", value(Just("shop.db".to_string()))),
        ("seed", value(Just("seed.sql".to_string()))),
        ("read_only", value(Just("true".to_string()))),
    ]);
    (
        server,
        proptest::collection::vec((name(), provider), 0..3),
        proptest::collection::vec((name(), price), 0..3),
        proptest::option::of(budget),
        proptest::option::of(database),
        value(
            proptest::sample::select(
                &["memory", "sqlite:x.db", "postgres://h/db", "redis://x"][..],
            )
            .prop_map(str::to_string),
        ),
    )
        .prop_map(|(server, providers, prices, budget, database, storage)| {
            let mut text = format!("server: {server}\nstorage: {storage}\nproviders:\n");
            for (n, p) in providers {
                text.push_str(&format!("  {n}: {p}\n"));
            }
            text.push_str("prices:\n");
            for (n, p) in prices {
                text.push_str(&format!("  {n}: {p}\n"));
            }
            if let Some(b) = budget {
                text.push_str(&format!("budgets: {{global: {b}}}\n"));
            }
            if let Some(d) = database {
                text.push_str(&format!("databases: {{shop: {d}}}\n"));
            }
            text
        })
        .boxed()
}

fn pipeline() -> BoxedStrategy<String> {
    let model = mapping(vec![
        ("provider", name()),
        ("name", name()),
        ("temperature", number()),
    ]);
    let limits = mapping(vec![
        ("max_tokens", number()),
        ("max_tool_rounds", number()),
        ("max_total_tokens", number()),
    ]);
    let timeouts = mapping(vec![
        ("connect", duration()),
        ("first_token", duration()),
        ("idle", duration()),
        ("total", duration()),
    ]);
    let retries = mapping(vec![
        ("attempts", number()),
        ("backoff", duration()),
        ("max_backoff", duration()),
    ]);
    let budget = mapping(vec![
        ("daily_usd", number()),
        ("on_exhausted", name()),
        ("downgrade_to", model.clone()),
    ]);
    let sql = mapping(vec![
        ("database", name()),
        (
            "query",
            value(prop_oneof![
                Just("\"SELECT 1 WHERE :x\"".to_string()),
                Just("\"ATTACH 'x' AS y\"".to_string()),
                "\"[ -!#-~]{0,30}\"",
            ]),
        ),
    ]);
    let tool = mapping(vec![
        ("name", name()),
        ("description", value("[a-z ]{0,20}")),
        // JSON is YAML: random schemas, regex patterns and all.
        ("parameters", value(json::value().prop_map(|v| v.text()))),
        ("sql", sql),
    ]);
    (
        mapping(vec![
            ("name", name()),
            ("model", model.clone()),
            ("limits", limits),
            ("timeouts", timeouts),
            ("retries", retries),
            ("budget", budget),
            ("system", value("[ -~]{0,20}")),
        ]),
        proptest::collection::vec(model, 0..3),
        proptest::collection::vec(tool, 0..3),
        any::<bool>(),
    )
        .prop_map(|(top, fallbacks, tools, block)| {
            // The same mapping in block style, or in flow style.
            let inner = &top[1..top.len() - 1];
            let mut text = if block {
                // Entries may contain ", " inside values, so the split is
                // approximate: a broken document is as good an input.
                inner
                    .split(", ")
                    .map(|e| format!("{e}\n"))
                    .collect::<String>()
            } else {
                format!("{top}\n")
            };
            if block {
                text.push_str(&format!("fallbacks: [{}]\n", fallbacks.join(", ")));
                text.push_str(&format!("tools: [{}]\n", tools.join(", ")));
            }
            text
        })
        .boxed()
}

/// Text that stresses the YAML parser itself: deep nesting, alias
/// expansion, long scalars, odd characters. Sizes stop where only the
/// parser's own limits would be tested, slowly: nesting past 300 levels,
/// alias expansion past serde-saphyr's 250,000-node budget (a 10^6-node
/// expansion takes seconds in a debug build before it is refused).
fn hostile_yaml() -> BoxedStrategy<String> {
    prop_oneof![
        (1usize..300).prop_map(|n| format!("a: {}{}", "[".repeat(n), "]".repeat(n))),
        (1usize..300).prop_map(|n| format!("a: {}1{}", "{b: ".repeat(n), "}".repeat(n))),
        (1usize..300).prop_map(|n| (0..n).map(|i| format!("{}- x\n", " ".repeat(i))).collect()),
        (1usize..100).prop_map(|n| (0..n)
            .map(|i| format!("{}a{i}:\n", "  ".repeat(i)))
            .collect()),
        (2usize..7, 2usize..7).prop_map(|(levels, width)| {
            let mut text = "l0: &l0 [x]\n".to_string();
            for l in 1..levels {
                let refs = vec![format!("*l{}", l - 1); width].join(", ");
                text.push_str(&format!("l{l}: &l{l} [{refs}]\n"));
            }
            text
        }),
        (1usize..100_000).prop_map(|n| format!("name: {}\n", "x".repeat(n))),
        proptest::collection::vec(
            proptest::sample::select(
                &[
                    ":",
                    "-",
                    "{",
                    "}",
                    "[",
                    "]",
                    ",",
                    "&a",
                    "*a",
                    "!!str",
                    "!x",
                    "|",
                    ">",
                    "'",
                    "\"",
                    "#",
                    "\n",
                    "  ",
                    "---",
                    "...",
                    "%YAML 1.2",
                    "? ",
                    "name",
                    "x",
                    "\t",
                    "\u{feff}",
                    "\r",
                    "\\",
                    "<<: *a",
                ][..]
            ),
            0..60,
        )
        .prop_map(|t| t.concat()),
    ]
    .boxed()
}

#[test]
fn structured_config_compiles_or_says_where() {
    let strategy = (settings(), proptest::collection::vec(pipeline(), 0..3));
    crate::check(file!(), 2, strategy, |(settings, pipelines)| {
        check_compile(&settings, &pipelines)
    });
}

#[test]
fn hostile_yaml_never_panics() {
    crate::check(
        file!(),
        2,
        (hostile_yaml(), any::<bool>()),
        |(text, as_settings)| {
            check_parse(&text)?;
            if as_settings {
                check_compile(&text, &[])
            } else {
                check_compile("providers: {}\n", &[text])
            }
        },
    );
}

#[test]
fn raw_bytes_never_panic() {
    let strategy = proptest::collection::vec(any::<u8>(), 0..400)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    crate::check(file!(), 1, strategy, |text| {
        check_parse(&text)?;
        check_compile(&text, std::slice::from_ref(&text))
    });
}

/// Used by the corpus replay: a folder holding `settings.yaml` and pipeline
/// files, or a single file tried as both.
pub fn check_path(path: &Path) -> Result<(), TestCaseError> {
    let text =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).expect("corpus file")).into_owned();
    if path.is_dir() {
        let mut pipelines = Vec::new();
        let mut settings = String::new();
        for entry in std::fs::read_dir(path).expect("corpus dir").flatten() {
            if entry.file_name() == "settings.yaml" {
                settings = text(&entry.path());
            } else {
                pipelines.push(text(&entry.path()));
            }
        }
        check_compile(&settings, &pipelines)
    } else {
        let t = text(path);
        check_parse(&t)?;
        check_compile(&t, &[])?;
        check_compile("providers: {}\n", &[t])
    }
}
