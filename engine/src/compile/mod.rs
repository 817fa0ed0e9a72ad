//! Compile: raw configuration -> runtime types that cannot be invalid.
//!
//! Reads every file of a pipelines directory, collects *all* diagnostics
//! (syntax, shape, unknown keys, semantic cross-checks), and only builds a
//! [`Catalog`] when there is no error.

pub mod clients;
pub mod cors;
mod keys;
mod pipeline;
mod settings;
mod telemetry;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::budget::{self, Budget};
use crate::config::node::{self, Node};
use crate::config::{
    Diagnostic, Pos, RawPipeline, RawProvider, RawSettings, SETTINGS_FILE, Spanned, diag,
};
use crate::ledger::Price;
use crate::provider::Provider;
use crate::provider::anthropic::{self, AnthropicProvider};
use crate::provider::openai::OpenAiProvider;
use crate::provider::replay::ReplayProvider;

/// Everything `sluice serve` needs, checked.
pub struct Catalog {
    pub server: ServerSettings,
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
    /// Problems that do not stop serving (e.g. an API key variable not set).
    pub warnings: Vec<Diagnostic>,
    /// Ledger URL: `sqlite:...` or `postgres://...`.
    pub storage: String,
    /// The budget every pipeline shares, if any.
    pub global_budget: Option<Budget>,
    /// Where budget alerts are posted.
    pub alert_webhook: Option<String>,
    /// The API keys, and whether requests need one.
    pub auth: Arc<crate::auth::Auth>,
    /// Where traces go; None when they are off.
    pub telemetry: Option<crate::telemetry::TraceSettings>,
}

/// The ledger's default place, relative to the settings file.
pub const DEFAULT_STORAGE: &str = "sqlite:data/sluice.db";

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub keepalive: Duration,
    pub shutdown_grace: Duration,
    pub connections: ConnectionLimits,
    /// Which web pages may call from a browser; `None`: no CORS header is
    /// ever sent. The one server setting a reload applies.
    pub cors: Option<Arc<cors::Cors>>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            keepalive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
            connections: ConnectionLimits::default(),
            cors: None,
        }
    }
}

/// What one client connection may hold, and how many there may be. Every
/// duration is longer than zero and every count at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head must arrive whole within this of its first byte
    /// (a new connection's first head: of the accept).
    pub header_timeout: Duration,
    /// A request body must arrive whole within this of its head.
    pub body_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// A connection whose client has taken no response byte for this long,
    /// with bytes waiting to be sent, is closed.
    pub write_timeout: Duration,
    /// `None`: derived from the descriptor limit when the server starts.
    pub max_connections: Option<usize>,
    /// Connections beyond the cap that still answer `/healthz` and
    /// `/readyz` (and refuse everything else with 503).
    pub reserved_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(30),
            max_connections: None,
            reserved_connections: 64,
        }
    }
}

/// A pipeline ready to serve.
pub struct Pipeline {
    pub name: String,
    pub description: Option<String>,
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    pub temperature: Option<f64>,
    pub system: Option<String>,
    /// Completion-token ceiling of one model call, > 0.
    pub max_tokens: u32,
    pub timeouts: Timeouts,
    /// The model's price; always set when any budget applies.
    pub price: Option<Price>,
    pub budget: Option<Budget>,
    /// Requests and tokens per minute, whoever calls.
    pub rate_limit: Option<crate::budget::RateLimit>,
    /// The budget every pipeline shares, as this configuration declares
    /// it (each pipeline carries it, so a request runs under the budgets
    /// of the configuration it started with, whatever is reloaded).
    pub global_budget: Option<Budget>,
    /// Tried in order after the pipeline's own model failed every retry.
    pub fallbacks: Vec<ModelRef>,
    pub retries: RetryPolicy,
    /// Tools the model may call, and what providers are told of them.
    pub tools: Vec<Arc<crate::tools::Tool>>,
    pub tool_specs: Arc<[crate::provider::ToolSpec]>,
    /// Model calls of one request that may ask for tools.
    pub max_tool_rounds: u32,
    /// Tokens of all rounds of one request together.
    pub max_total_tokens: Option<u64>,
    /// What clients of the compatible routes may set.
    pub clients: clients::ClientRules,
}

/// Rounds of tool calls allowed when a pipeline does not say.
pub const DEFAULT_MAX_TOOL_ROUNDS: u32 = 4;

/// A model of a provider, with its price when it has one.
#[derive(Clone)]
pub struct ModelRef {
    pub provider_name: String,
    pub provider: Arc<dyn Provider>,
    pub model: String,
    pub price: Option<Price>,
}

/// How often, and how patiently, a failing call is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries of each model, the first included (>= 1).
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub const NONE: RetryPolicy = RetryPolicy {
        attempts: 1,
        backoff: Duration::from_millis(250),
        max_backoff: Duration::from_secs(10),
    };
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("provider", &self.provider_name)
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

/// All four deadlines of a request; `first_token`, `idle` and `connect` are
/// never longer than `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        connect: Duration::from_secs(5),
        first_token: Duration::from_secs(30),
        idle: Duration::from_secs(30),
        total: Duration::from_secs(300),
    };
}

/// Provider kinds that `settings.yaml` may declare.
pub const PROVIDER_KINDS: &[&str] = &["openai", "anthropic", "replay"];

/// Compiles every file in `dir`. On success the catalog carries warnings;
/// on failure every diagnostic (errors and warnings) is returned, sorted.
pub fn load_dir(dir: &Path) -> Result<Catalog, Vec<Diagnostic>> {
    let mut files = Vec::new();
    let mut diags = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_yaml = matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                );
                if is_yaml && path.is_file() {
                    files.push(path);
                }
            }
        }
        Err(e) => {
            diags.push(Diagnostic::error(
                dir,
                Pos::START,
                format!("cannot read pipelines directory: {e}"),
            ));
            return Err(diags);
        }
    }
    files.sort();
    let settings_path = dir.join(SETTINGS_FILE);
    let mut sources = Vec::new();
    let mut settings_source = None;
    for path in files {
        match std::fs::read_to_string(&path) {
            Ok(text) if path == settings_path => settings_source = Some((path, text)),
            Ok(text) => sources.push((path, text)),
            Err(e) => diags.push(Diagnostic::error(
                &path,
                Pos::START,
                format!("cannot read file: {e}"),
            )),
        }
    }
    let Some(settings_source) = settings_source else {
        diags.push(Diagnostic::error(
            &settings_path,
            Pos::START,
            "missing settings file (providers and server settings shared by the pipelines)",
        ));
        return Err(diags);
    };
    match compile_sources(&settings_source, &sources) {
        Ok(mut catalog) => {
            if diags.is_empty() {
                Ok(catalog)
            } else {
                diags.append(&mut catalog.warnings);
                diag::sort(&mut diags);
                Err(diags)
            }
        }
        Err(mut more) => {
            diags.append(&mut more);
            diag::sort(&mut diags);
            Err(diags)
        }
    }
}

/// Compiles a settings file and pipeline files given as `(path, text)`.
/// Relative paths in settings resolve against the settings file's folder.
pub fn compile_sources(
    settings: &(PathBuf, String),
    pipelines: &[(PathBuf, String)],
) -> Result<Catalog, Vec<Diagnostic>> {
    let mut cx = Cx {
        diags: Vec::new(),
        secrets: crate::provider::secrets::Secrets::new(),
    };
    let (settings_path, settings_text) = settings;
    let raw_settings = cx.parse::<RawSettings>(settings_path, settings_text);
    let base_dir = settings_path.parent().unwrap_or(Path::new("."));
    let (server, providers) = match &raw_settings {
        Some(raw) => (
            cx.server(settings_path, raw),
            cx.providers(settings_path, base_dir, raw),
        ),
        None => (ServerSettings::default(), BTreeMap::new()),
    };
    let prices = raw_settings
        .as_ref()
        .map(|raw| budget::compile_prices(settings_path, &raw.prices, &mut cx.diags))
        .unwrap_or_default();
    let global_budget = raw_settings
        .as_ref()
        .and_then(|raw| raw.budgets.global.as_ref())
        .and_then(|b| {
            let mut no_downgrade = |m: &crate::config::RawModel, d: &mut Vec<Diagnostic>| {
                d.push(Diagnostic::error(
                settings_path,
                m.provider.pos,
                "the global budget cannot downgrade (each pipeline declares its own cheaper model)",
            ));
                None
            };
            budget::compile_budget(
                settings_path,
                b,
                "global".into(),
                &mut cx.diags,
                &mut no_downgrade,
            )
        });
    let databases = match &raw_settings {
        Some(raw) => {
            crate::tools::open_databases(base_dir, &raw.databases, settings_path, &mut cx.diags)
        }
        None => crate::tools::Databases::unchecked(),
    };
    let money = MoneyCx {
        databases: &databases,
        prices: &prices,
        // A key's or a team's budget, like the global one, may pay for
        // any pipeline's model.
        global_budget: raw_settings.as_ref().is_some_and(|r| {
            r.budgets.global.is_some()
                || r.keys.values().any(|k| k.value.budget.is_some())
                || r.teams.values().any(|t| t.value.budget.is_some())
        }),
    };
    let (storage, alert_webhook) = match &raw_settings {
        Some(raw) => cx.ledger_settings(settings_path, raw),
        None => (DEFAULT_STORAGE.to_string(), None),
    };
    let telemetry = raw_settings.as_ref().and_then(|raw| {
        cx.telemetry(
            settings_path,
            raw.telemetry.as_ref(),
            &telemetry::process_env,
        )
    });

    // Names declared in settings, valid or not: a pipeline naming a provider
    // that failed its own checks must not also hear it is undeclared. With
    // no readable settings at all, every name counts as declared.
    let declared: Option<Vec<String>> = raw_settings
        .as_ref()
        .map(|raw| raw.providers.keys().map(|k| k.value.clone()).collect());
    let mut pipelines_out: BTreeMap<String, Arc<Pipeline>> = BTreeMap::new();
    let mut routes: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
    for (path, text) in pipelines {
        let Some(raw) = cx.parse::<RawPipeline>(path, text) else {
            continue;
        };
        let duplicate = routes.get(&raw.name.value).cloned();
        if let Some((first_file, first_pos)) = &duplicate {
            cx.error(
                path,
                raw.name.pos,
                format!(
                    "pipeline \"{}\" is already declared at {}:{}:{}",
                    raw.name.value,
                    first_file.display(),
                    first_pos.line,
                    first_pos.col
                ),
            );
        } else {
            routes.insert(raw.name.value.clone(), (path.clone(), raw.name.pos));
        }
        // A duplicate is still checked, so its other problems show up now.
        if let Some(mut p) = cx.pipeline(path, raw, &providers, &declared, &money)
            && duplicate.is_none()
        {
            p.global_budget = global_budget.clone();
            pipelines_out.insert(p.name.clone(), Arc::new(p));
        }
    }

    let auth = match &raw_settings {
        Some(raw) => cx.keys(settings_path, raw, &routes),
        None => crate::auth::Auth::default(),
    };

    let (errors, warnings): (Vec<_>, Vec<_>) = cx.diags.into_iter().partition(|d| d.is_error());
    if errors.is_empty() {
        let mut warnings = warnings;
        diag::sort(&mut warnings);
        Ok(Catalog {
            server,
            pipelines: pipelines_out,
            warnings,
            storage,
            global_budget,
            alert_webhook,
            auth: Arc::new(auth),
            telemetry,
        })
    } else {
        let mut all = errors;
        all.extend(warnings);
        diag::sort(&mut all);
        Err(all)
    }
}

/// Prices and whether a global budget applies, for pipeline checks.
struct MoneyCx<'a> {
    /// Tool databases, opened (and seeded) once for every pipeline.
    databases: &'a crate::tools::Databases,
    prices: &'a BTreeMap<String, Price>,
    global_budget: bool,
}

/// A declared provider, resolved.
struct ProviderEntry {
    provider: Arc<dyn Provider>,
    replay: Option<Arc<ReplayProvider>>,
    /// Set when the API key variable is not set: warned about once a
    /// pipeline uses this provider.
    missing_key: Option<Diagnostic>,
}

struct Cx {
    diags: Vec<Diagnostic>,
    /// Every secret read while compiling (API keys, URLs with credentials),
    /// shared with the providers, which scrub them from what comes back.
    secrets: crate::provider::secrets::Secrets,
}

impl Cx {
    fn error(&mut self, file: &Path, pos: Pos, msg: impl Into<String>) {
        self.diags.push(Diagnostic::error(file, pos, msg));
    }

    fn parse<T: for<'a> Deserialize<'a>>(&mut self, file: &Path, text: &str) -> Option<T> {
        let node: Node = match node::parse(text) {
            Ok(n) => n,
            Err((pos, msg)) => {
                self.error(file, pos, msg);
                return None;
            }
        };
        if matches!(node.kind, node::Kind::Null) {
            self.error(file, Pos::START, "file is empty");
            return None;
        }
        let (result, notes) = node::from_node::<T>(&node);
        let noted = !notes.is_empty();
        for n in notes {
            self.error(file, n.pos, n.message);
        }
        match result {
            Ok(v) if !noted => Some(v),
            // Unknown keys were reported; the rest of the file is still
            // checked so that semantic problems show up in the same run.
            Ok(v) => Some(v),
            Err(e) => {
                self.error(file, e.pos.unwrap_or(Pos::START), e.message);
                None
            }
        }
    }

    /// A duration that must be longer than zero.
    fn duration(&mut self, file: &Path, raw: &Spanned<String>, what: &str) -> Option<Duration> {
        match self.duration_or_zero(file, raw, what)? {
            d if d.is_zero() => {
                self.error(file, raw.pos, format!("{what} must be longer than zero"));
                None
            }
            d => Some(d),
        }
    }

    fn duration_or_zero(
        &mut self,
        file: &Path,
        raw: &Spanned<String>,
        what: &str,
    ) -> Option<Duration> {
        match humantime::parse_duration(raw.value.trim()) {
            Ok(d) => Some(d),
            Err(_) => {
                self.error(
                    file,
                    raw.pos,
                    format!(
                        "invalid duration \"{}\" for {what}, expected a number and a unit such as 250ms, 10s or 2m",
                        raw.value
                    ),
                );
                None
            }
        }
    }
}
