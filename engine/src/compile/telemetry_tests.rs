use std::collections::HashMap;
use std::path::Path;

use super::*;
use crate::config::RawSettings;

/// Compiles `yaml` (a whole settings file) with `env` as the environment:
/// the settings, or the diagnostics as `line:col: message`.
fn compile(yaml: &str, env: &[(&str, &str)]) -> Result<Option<TraceSettings>, Vec<String>> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.get(name).cloned().filter(|v| !v.trim().is_empty());
    let mut cx = Cx {
        diags: Vec::new(),
        secrets: crate::provider::secrets::Secrets::new(),
    };
    let file = Path::new("settings.yaml");
    let raw = cx
        .parse::<RawSettings>(file, yaml)
        .expect("the settings parse");
    let out = cx.telemetry(file, raw.telemetry.as_ref(), &lookup);
    crate::config::diag::sort(&mut cx.diags);
    if cx.diags.is_empty() {
        Ok(out)
    } else {
        Err(cx
            .diags
            .iter()
            .map(|d| format!("{}:{}: {}", d.pos.line, d.pos.col, d.message))
            .collect())
    }
}

fn on(yaml: &str, env: &[(&str, &str)]) -> TraceSettings {
    match compile(yaml, env) {
        Ok(Some(s)) => s,
        other => panic!("expected trace settings, got {other:?}"),
    }
}

const NOTHING: &str = "storage: memory\n";

#[test]
fn off_without_a_section_or_an_endpoint_in_the_environment() {
    assert_eq!(compile(NOTHING, &[]), Ok(None));
    assert_eq!(compile(NOTHING, &[("OTEL_SERVICE_NAME", "x")]), Ok(None));
    // Switched off either way, whatever else says.
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
    assert_eq!(
        compile(NOTHING, &[env[0], ("OTEL_SDK_DISABLED", "true")]),
        Ok(None)
    );
    assert_eq!(compile("telemetry: {enabled: false}\n", &env), Ok(None));
}

#[test]
fn the_standard_environment_alone_turns_traces_on() {
    let s = on(
        NOTHING,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")],
    );
    assert_eq!(s.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(s.service_name, "sluice");
    assert_eq!(s.sampling, Sampling::ALWAYS);
    assert!(!s.capture_content);
    assert_eq!(
        (s.timeout, s.queue_size, s.batch_size, s.batch_delay),
        (Duration::from_secs(10), 2048, 512, Duration::from_secs(5))
    );
    // The traces endpoint is taken as it is, and wins over the base.
    let s = on(
        NOTHING,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://traces.example:443/in",
            ),
            ("OTEL_SERVICE_NAME", "gateway"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ],
    );
    assert_eq!(s.endpoint, "https://traces.example:443/in");
    assert_eq!(s.service_name, "gateway");
    assert_eq!(s.timeout, Duration::from_millis(2500));
    assert_eq!(
        s.sampling,
        Sampling {
            parent_based: true,
            ratio: 0.25
        }
    );
    let s = on(
        NOTHING,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_SAMPLER", "always_off"),
        ],
    );
    assert_eq!(
        s.sampling,
        Sampling {
            parent_based: false,
            ratio: 0.0
        }
    );
}

#[test]
fn the_file_wins_and_the_environment_fills_the_rest() {
    let yaml = "telemetry:\n  endpoint: http://file:4318\n  service_name: from-file\n  sample_ratio: 0.5\n  capture_content: true\n  timeout: 3s\n  queue_size: 100\n  batch_size: 10\n  batch_delay: 50ms\n  headers: {x-team: blue}\n  headers_env: {authorization: TOKEN_VAR}\n";
    let s = on(
        yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("TOKEN_VAR", "Bearer s3cret"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-team=red, x-extra=a%20b%2Cc",
            ),
        ],
    );
    assert_eq!(s.endpoint, "http://file:4318/v1/traces");
    assert_eq!(s.service_name, "from-file");
    assert_eq!(
        s.sampling,
        Sampling {
            parent_based: true,
            ratio: 0.5
        }
    );
    assert!(s.capture_content);
    assert_eq!(
        (s.timeout, s.queue_size, s.batch_size, s.batch_delay),
        (Duration::from_secs(3), 100, 10, Duration::from_millis(50))
    );
    let headers: Vec<(&str, &str)> = s
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        headers,
        [
            ("x-team", "blue"),
            ("authorization", "Bearer s3cret"),
            ("x-extra", "a b,c"),
        ]
    );
    assert!(s.headers.iter().all(|(_, v)| v.is_sensitive()));
    // Header values are secrets: never in the settings' Debug.
    assert!(!format!("{s:?}").contains("s3cret"));
    // A section with no endpoint anywhere uses the collector's default.
    assert_eq!(
        on("telemetry: {}\n", &[]).endpoint,
        "http://localhost:4318/v1/traces"
    );
}

#[test]
fn bad_values_are_errors_at_their_place() {
    let errors = |yaml: &str, env: &[(&str, &str)]| compile(yaml, env).unwrap_err();
    assert_eq!(
        errors("telemetry:\n  endpoint: ftp://x\n", &[]),
        [
            "2:13: invalid telemetry endpoint, expected the collector's http:// or https:// URL such as http://localhost:4318"
        ]
    );
    assert_eq!(
        errors("telemetry:\n  sample_ratio: 1.5\n", &[]),
        ["2:17: sample_ratio must be between 0 and 1"]
    );
    assert_eq!(
        errors("telemetry:\n  queue_size: 10\n  batch_size: 20\n", &[]),
        ["3:15: batch_size (20) must not exceed queue_size (10)"]
    );
    assert_eq!(
        errors("telemetry:\n  queue_size: 0\n  timeout: soon\n", &[]),
        [
            "2:15: queue_size must be at least 1",
            "3:12: invalid duration \"soon\" for timeout, expected a number and a unit such as 250ms, 10s or 2m"
        ]
    );
    assert_eq!(
        errors("telemetry:\n  headers_env: {authorization: NOT_SET}\n", &[]),
        ["2:32: environment variable NOT_SET (telemetry header authorization) is not set"]
    );
    assert_eq!(
        errors("telemetry:\n  headers: {\"bad name\": x}\n", &[]),
        ["2:13: invalid header name \"bad name\" in telemetry.headers"]
    );
    // The environment's are reported at the section, or the file's start.
    let env = |k, v| [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), (k, v)];
    assert_eq!(
        errors(NOTHING, &env("OTEL_TRACES_SAMPLER", "jaeger_remote")),
        [
            "1:1: environment variable OTEL_TRACES_SAMPLER is \"jaeger_remote\", expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
        ]
    );
    assert_eq!(
        errors(
            "storage: memory\ntelemetry: {}\n",
            &[
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2")
            ]
        ),
        ["2:12: environment variable OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1"]
    );
    assert_eq!(
        errors(NOTHING, &env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")),
        [
            "1:1: environment variable OTEL_EXPORTER_OTLP_PROTOCOL is \"grpc\"; Sluice exports traces as http/protobuf only"
        ]
    );
    assert_eq!(
        errors(
            NOTHING,
            &env("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        ),
        [
            "1:1: environment variable OTEL_EXPORTER_OTLP_TRACES_COMPRESSION is \"gzip\"; Sluice exports traces uncompressed (none)"
        ]
    );
    assert_eq!(
        errors(NOTHING, &env("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")),
        [
            "1:1: environment variable OTEL_EXPORTER_OTLP_TIMEOUT must be a whole number of milliseconds, more than 0"
        ]
    );
    assert_eq!(
        errors(NOTHING, &env("OTEL_EXPORTER_OTLP_HEADERS", "novalue")),
        [
            "1:1: environment variable OTEL_EXPORTER_OTLP_HEADERS holds an entry without '=' (expected name=value,...)"
        ]
    );
    assert_eq!(
        errors(
            NOTHING,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]
        ),
        ["1:1: environment variable OTEL_EXPORTER_OTLP_ENDPOINT is not an http:// or https:// URL"]
    );
}
