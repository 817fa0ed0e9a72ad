//! `telemetry:` in `settings.yaml`: where traces go and what they carry.
//! Every key is optional; the standard `OTEL_*` environment variables fill
//! what the file leaves out (see `compile/telemetry.rs`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

use super::{Spanned, schema};

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `false`: no traces, whatever the environment says.
    pub enabled: Option<Spanned<bool>>,
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended), like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`. Default `http://localhost:4318`.
    pub endpoint: Option<Spanned<String>>,
    /// Headers sent with every export, by name.
    #[serde(default)]
    pub headers: BTreeMap<Spanned<String>, Spanned<String>>,
    /// Headers whose values are read from environment variables (tokens),
    /// by header name: `{authorization: OTLP_AUTH}`.
    #[serde(default)]
    pub headers_env: BTreeMap<Spanned<String>, Spanned<String>>,
    /// `service.name` of the spans (default `OTEL_SERVICE_NAME`, or `sluice`).
    pub service_name: Option<Spanned<String>>,
    /// Fraction of new traces kept, 0 to 1 (a client's sampled flag is
    /// followed). Default `OTEL_TRACES_SAMPLER`, or every trace.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: Option<Spanned<f64>>,
    /// Export prompts and completions as span attributes (default false).
    pub capture_content: Option<Spanned<bool>>,
    /// Longest one export may take (default 10s).
    #[schemars(with = "Option<schema::Duration>")]
    pub timeout: Option<Spanned<String>>,
    /// Most finished spans waiting for export; more are dropped and counted
    /// (default 2048).
    #[schemars(range(min = 1))]
    pub queue_size: Option<Spanned<u64>>,
    /// Most spans in one export (default 512).
    #[schemars(range(min = 1))]
    pub batch_size: Option<Spanned<u64>>,
    /// Longest a finished span waits before its batch is sent (default 5s).
    #[schemars(with = "Option<schema::Duration>")]
    pub batch_delay: Option<Spanned<String>>,
}
