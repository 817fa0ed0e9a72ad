//! Raw configuration shapes, exactly as written in YAML.
//!
//! Nothing here is validated beyond its shape: unknown keys are reported
//! (see [`node`]), values keep their positions, and `compile` turns these
//! into runtime types that cannot be invalid.

pub mod diag;
pub mod node;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use diag::{Diagnostic, Pos, Severity};
pub use node::Spanned;

/// The name of the shared settings file inside a pipelines directory.
pub const SETTINGS_FILE: &str = "settings.yaml";

/// `settings.yaml`: providers and server settings shared by all pipelines.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub providers: BTreeMap<Spanned<String>, Spanned<RawProvider>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `host:port` to listen on.
    pub listen: Option<Spanned<String>>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// Interval of keep-alive comments while the upstream is silent.
    pub keepalive: Option<Spanned<String>>,
    /// How long open streams may run on after a shutdown signal.
    pub shutdown_grace: Option<Spanned<String>>,
}

/// A provider. `kind` selects the wire format; which other keys apply
/// depends on it (checked by `compile`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: Spanned<String>,
    /// `openai`: base URL up to and including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<Spanned<String>>,
    /// `openai`: the environment variable holding the API key.
    pub api_key_env: Option<Spanned<String>>,
    /// `replay`: directory of recorded stream bodies, relative to this file.
    pub fixtures: Option<Spanned<String>>,
    /// `replay`: delay before each recorded event.
    pub pace: Option<Spanned<String>>,
}

/// One pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub model: RawModel,
    pub system: Option<String>,
    pub limits: RawLimits,
    #[serde(default)]
    pub timeouts: RawTimeouts,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: Spanned<String>,
    pub name: Spanned<String>,
    pub temperature: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Completion-token ceiling of one model call. Read as any number so
    /// that `-5`, `64.5` or `1e30` are reported as out of range, not as a
    /// type error.
    pub max_tokens: Spanned<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<Spanned<String>>,
    pub first_token: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub total: Option<Spanned<String>>,
}
