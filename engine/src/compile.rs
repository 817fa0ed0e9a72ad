//! Compile: raw configuration -> runtime types that cannot be invalid.
//!
//! Reads every file of a pipelines directory, collects *all* diagnostics
//! (syntax, shape, unknown keys, semantic cross-checks), and only builds a
//! [`Catalog`] when there is no error.

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
}

/// The ledger's default place, relative to the working directory.
pub const DEFAULT_STORAGE: &str = "sqlite:data/sluice.db";

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    pub keepalive: Duration,
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            keepalive: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(10),
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
    let mut cx = Cx { diags: Vec::new() };
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
    let money = MoneyCx {
        prices: &prices,
        global_budget: raw_settings
            .as_ref()
            .is_some_and(|r| r.budgets.global.is_some()),
    };
    let (storage, alert_webhook) = match &raw_settings {
        Some(raw) => cx.ledger_settings(settings_path, raw),
        None => (DEFAULT_STORAGE.to_string(), None),
    };

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
        if let Some(p) = cx.pipeline(path, raw, &providers, &declared, &money)
            && duplicate.is_none()
        {
            pipelines_out.insert(p.name.clone(), Arc::new(p));
        }
    }

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

    fn server(&mut self, file: &Path, raw: &RawSettings) -> ServerSettings {
        let mut out = ServerSettings::default();
        let s = &raw.server;
        if let Some(listen) = &s.listen {
            match listen.value.parse::<SocketAddr>() {
                Ok(addr) => out.listen = addr,
                Err(_) => self.error(
                    file,
                    listen.pos,
                    format!(
                        "invalid listen address \"{}\", expected host:port such as 127.0.0.1:8080",
                        listen.value
                    ),
                ),
            }
        }
        if let Some(max) = &s.max_body_bytes {
            if max.value == 0 {
                self.error(file, max.pos, "max_body_bytes must be greater than zero");
            } else {
                out.max_body_bytes = usize::try_from(max.value).unwrap_or(usize::MAX);
            }
        }
        if let Some(d) = s
            .keepalive
            .as_ref()
            .and_then(|k| self.duration(file, k, "keepalive"))
        {
            out.keepalive = d;
        }
        if let Some(d) = s
            .shutdown_grace
            .as_ref()
            .and_then(|k| self.duration(file, k, "shutdown_grace"))
        {
            out.shutdown_grace = d;
        }
        out
    }

    fn providers(
        &mut self,
        file: &Path,
        base_dir: &Path,
        raw: &RawSettings,
    ) -> BTreeMap<String, ProviderEntry> {
        let mut out = BTreeMap::new();
        for (name, p) in &raw.providers {
            if let Some(entry) = self.provider(file, base_dir, name, p) {
                out.insert(name.value.clone(), entry);
            }
        }
        out
    }

    fn provider(
        &mut self,
        file: &Path,
        base_dir: &Path,
        name: &Spanned<String>,
        p: &Spanned<RawProvider>,
    ) -> Option<ProviderEntry> {
        let kind = p.kind.value.as_str();
        let not_for =
            |key: &str| format!("\"{key}\" does not apply to a provider of kind \"{kind}\"");
        match kind {
            "openai" | "anthropic" => {
                if let Some(f) = &p.fixtures {
                    self.error(file, f.pos, not_for("fixtures"));
                }
                if let Some(f) = &p.pace {
                    self.error(file, f.pos, not_for("pace"));
                }
                let uri = match &p.base_url {
                    None if kind == "anthropic" => {
                        http::Uri::from_static(anthropic::DEFAULT_BASE_URL)
                    }
                    None => {
                        self.error(
                            file,
                            p.pos,
                            format!(
                                "provider \"{}\" of kind \"openai\" needs a base_url",
                                name.value
                            ),
                        );
                        return None;
                    }
                    Some(base_url) => match base_url.value.parse::<http::Uri>() {
                        Ok(u)
                            if matches!(u.scheme_str(), Some("http" | "https"))
                                && u.host().is_some() =>
                        {
                            u
                        }
                        _ => {
                            self.error(
                                file,
                                base_url.pos,
                                format!(
                                    "invalid base_url \"{}\", expected an http:// or https:// URL",
                                    base_url.value
                                ),
                            );
                            return None;
                        }
                    },
                };
                let mut api_key = None;
                let mut missing_key = None;
                if let Some(var) = &p.api_key_env {
                    match std::env::var(&var.value) {
                        Ok(v) if !v.is_empty() => api_key = Some(v),
                        _ => {
                            missing_key = Some(Diagnostic::warning(
                                file,
                                var.pos,
                                format!(
                                    "environment variable {} is not set; calls to provider \"{}\" will fail",
                                    var.value, name.value
                                ),
                            ))
                        }
                    }
                }
                let key_env = p.api_key_env.as_ref().map(|v| v.value.clone());
                let provider: Arc<dyn Provider> = if kind == "anthropic" {
                    Arc::new(AnthropicProvider::new(&name.value, uri, api_key, key_env))
                } else {
                    Arc::new(OpenAiProvider::new(&name.value, uri, api_key, key_env))
                };
                Some(ProviderEntry {
                    provider,
                    replay: None,
                    missing_key,
                })
            }
            "replay" => {
                for (key, v) in [("base_url", &p.base_url), ("api_key_env", &p.api_key_env)] {
                    if let Some(v) = v {
                        self.error(file, v.pos, not_for(key));
                    }
                }
                let Some(dir) = &p.fixtures else {
                    self.error(
                        file,
                        p.pos,
                        format!(
                            "provider \"{}\" of kind \"replay\" needs a fixtures directory",
                            name.value
                        ),
                    );
                    return None;
                };
                let dir_path = base_dir.join(&dir.value);
                if !dir_path.is_dir() {
                    self.error(
                        file,
                        dir.pos,
                        format!(
                            "fixtures directory \"{}\" does not exist (paths are relative to {SETTINGS_FILE})",
                            dir.value
                        ),
                    );
                    return None;
                }
                let pace = match &p.pace {
                    Some(pace) => self.duration_or_zero(file, pace, "pace")?,
                    None => Duration::ZERO,
                };
                let replay = Arc::new(ReplayProvider::new(dir_path, pace));
                Some(ProviderEntry {
                    provider: replay.clone(),
                    replay: Some(replay),
                    missing_key: None,
                })
            }
            other => {
                let hint = diag::suggest(other, PROVIDER_KINDS.iter().copied())
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                self.error(
                    file,
                    p.kind.pos,
                    format!(
                        "unknown provider kind \"{other}\", expected one of {}{hint}",
                        node::quoted_list(PROVIDER_KINDS)
                    ),
                );
                None
            }
        }
    }

    fn ledger_settings(&mut self, file: &Path, raw: &RawSettings) -> (String, Option<String>) {
        let storage = match (&raw.storage, &raw.storage_env) {
            (Some(_), Some(env)) => {
                self.error(
                    file,
                    env.pos,
                    "give either storage or storage_env, not both",
                );
                DEFAULT_STORAGE.to_string()
            }
            (Some(s), None) => s.value.clone(),
            (None, Some(env)) => match std::env::var(&env.value) {
                Ok(v) if !v.is_empty() => v,
                _ => {
                    self.error(
                        file,
                        env.pos,
                        format!(
                            "environment variable {} (storage_env) is not set",
                            env.value
                        ),
                    );
                    DEFAULT_STORAGE.to_string()
                }
            },
            (None, None) => DEFAULT_STORAGE.to_string(),
        };
        let known = storage == "memory"
            || storage.starts_with("sqlite:")
            || storage.starts_with("postgres://")
            || storage.starts_with("postgresql://");
        if !known {
            let pos = raw
                .storage
                .as_ref()
                .or(raw.storage_env.as_ref())
                .map_or(Pos::START, |s| s.pos);
            // The URL may carry a password: do not echo it.
            self.error(
                file,
                pos,
                "invalid storage, expected sqlite:PATH, postgres://... or memory",
            );
        }
        let mut webhook = None;
        if let Some(alerts) = &raw.alerts {
            let url = match (&alerts.webhook_url, &alerts.webhook_url_env) {
                (Some(u), None) => Some((u.value.clone(), u.pos)),
                (None, Some(env)) => match std::env::var(&env.value) {
                    Ok(v) if !v.is_empty() => Some((v, env.pos)),
                    _ => {
                        self.diags.push(Diagnostic::warning(
                            file,
                            env.pos,
                            format!("environment variable {} is not set; budget alerts will only be logged", env.value),
                        ));
                        None
                    }
                },
                (Some(_), Some(env)) => {
                    self.error(
                        file,
                        env.pos,
                        "give either webhook_url or webhook_url_env, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            if let Some((url, pos)) = url {
                match url.parse::<http::Uri>() {
                    Ok(u)
                        if matches!(u.scheme_str(), Some("http" | "https"))
                            && u.host().is_some() =>
                    {
                        webhook = Some(url)
                    }
                    _ => self.error(
                        file,
                        pos,
                        "invalid alert webhook, expected an http:// or https:// URL",
                    ),
                }
            }
        }
        (storage, webhook)
    }

    fn downgrade_target(
        &mut self,
        file: &Path,
        m: &crate::config::RawModel,
        providers: &BTreeMap<String, ProviderEntry>,
        money: &MoneyCx,
        main_price: Option<Price>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<budget::Downgrade> {
        let Some(entry) = providers.get(&m.provider.value) else {
            d.push(Diagnostic::error(
                file,
                m.provider.pos,
                format!("unknown provider \"{}\" in downgrade_to", m.provider.value),
            ));
            return None;
        };
        if let Some(replay) = &entry.replay
            && let Err(msg) = replay.preload(&m.name.value)
        {
            d.push(Diagnostic::error(file, m.name.pos, msg));
            return None;
        }
        let Some(price) = money.prices.get(&m.name.value).copied() else {
            d.push(Diagnostic::error(
                file,
                m.name.pos,
                format!(
                    "downgrade model \"{}\" has no price in settings.yaml",
                    m.name.value
                ),
            ));
            return None;
        };
        if let Some(main) = main_price
            && price.input_per_m >= main.input_per_m
            && price.output_per_m >= main.output_per_m
        {
            d.push(Diagnostic::error(
                file,
                m.name.pos,
                format!(
                    "downgrade model \"{}\" is not cheaper than the pipeline's model",
                    m.name.value
                ),
            ));
            return None;
        }
        Some(budget::Downgrade {
            provider_name: m.provider.value.clone(),
            provider: entry.provider.clone(),
            model: m.name.value.clone(),
            price,
        })
    }

    fn pipeline(
        &mut self,
        file: &Path,
        raw: RawPipeline,
        providers: &BTreeMap<String, ProviderEntry>,
        declared: &Option<Vec<String>>,
        money: &MoneyCx,
    ) -> Option<Pipeline> {
        let mut ok = true;
        let name = &raw.name;
        if !valid_route_name(&name.value) {
            self.error(
                file,
                name.pos,
                format!(
                    "invalid pipeline name \"{}\", expected lowercase letters, digits, '-' and '_' (it becomes the route /v1/pipelines/NAME)",
                    name.value
                ),
            );
            ok = false;
        }

        let provider = match providers.get(&raw.model.provider.value) {
            Some(p) => Some(p),
            None => {
                let is_declared = declared
                    .as_ref()
                    .is_none_or(|names| names.contains(&raw.model.provider.value));
                if !is_declared {
                    let hint = diag::suggest(
                        &raw.model.provider.value,
                        providers.keys().map(String::as_str),
                    )
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                    let declared = if providers.is_empty() {
                        "no provider is declared in settings.yaml".to_string()
                    } else {
                        format!(
                            "declared providers: {}",
                            providers
                                .keys()
                                .map(|k| format!("\"{k}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.error(
                        file,
                        raw.model.provider.pos,
                        format!(
                            "unknown provider \"{}\"{hint}; {declared}",
                            raw.model.provider.value
                        ),
                    );
                }
                ok = false;
                None
            }
        };

        if raw.model.name.value.trim().is_empty() {
            self.error(file, raw.model.name.pos, "model name is empty");
            ok = false;
        } else if let Some(replay) = provider.and_then(|p| p.replay.as_ref())
            && let Err(msg) = replay.preload(&raw.model.name.value)
        {
            self.error(file, raw.model.name.pos, msg);
            ok = false;
        }

        if let Some(t) = &raw.model.temperature
            && !(0.0..=2.0).contains(&t.value)
        {
            self.error(
                file,
                t.pos,
                format!("temperature {} is out of range, expected 0 to 2", t.value),
            );
            ok = false;
        }

        let max_tokens = raw.limits.max_tokens.value;
        if max_tokens.fract() != 0.0 || !(1.0..=f64::from(u32::MAX)).contains(&max_tokens) {
            self.error(
                file,
                raw.limits.max_tokens.pos,
                format!(
                    "max_tokens must be a whole number between 1 and {}, found {max_tokens}",
                    u32::MAX
                ),
            );
            ok = false;
        }

        let mut timeouts = Timeouts::DEFAULT;
        let mut durations_ok = true;
        let t = &raw.timeouts;
        for (slot, raw_d, what) in [
            (&mut timeouts.connect, &t.connect, "timeouts.connect"),
            (
                &mut timeouts.first_token,
                &t.first_token,
                "timeouts.first_token",
            ),
            (&mut timeouts.idle, &t.idle, "timeouts.idle"),
            (&mut timeouts.total, &t.total, "timeouts.total"),
        ] {
            if let Some(raw_d) = raw_d {
                match self.duration(file, raw_d, what) {
                    Some(d) => *slot = d,
                    None => durations_ok = false,
                }
            }
        }
        // A default longer than an explicit total shrinks to it; only
        // values the user wrote can contradict each other.
        for (d, raw_d) in [
            (&mut timeouts.connect, &t.connect),
            (&mut timeouts.first_token, &t.first_token),
            (&mut timeouts.idle, &t.idle),
        ] {
            if raw_d.is_none() {
                *d = (*d).min(timeouts.total);
            }
        }
        ok &= durations_ok;
        if durations_ok {
            let total_pos = t.total.as_ref().map(|s| s.pos);
            for (d, raw_d, what) in [
                (timeouts.connect, &t.connect, "connect"),
                (timeouts.first_token, &t.first_token, "first_token"),
                (timeouts.idle, &t.idle, "idle"),
            ] {
                if d > timeouts.total {
                    let pos = raw_d
                        .as_ref()
                        .map(|s| s.pos)
                        .or(total_pos)
                        .unwrap_or(Pos::START);
                    self.error(
                        file,
                        pos,
                        format!(
                            "timeouts.{what} ({}) is longer than timeouts.total ({}); it could never fire",
                            humantime::format_duration(d),
                            humantime::format_duration(timeouts.total)
                        ),
                    );
                    ok = false;
                }
            }
        }

        let price = money.prices.get(&raw.model.name.value).copied();
        if price.is_none() && (raw.budget.is_some() || money.global_budget) {
            self.error(
                file,
                raw.model.name.pos,
                format!(
                    "model \"{}\" has no price in settings.yaml (prices: {{\"{}\": {{input: ..., output: ...}}}}); a budget needs a price for every model it pays for",
                    raw.model.name.value, raw.model.name.value
                ),
            );
            ok = false;
        }
        let budget = match &raw.budget {
            None => None,
            Some(b) => {
                let main_price = price;
                let mut downgrade = |m: &crate::config::RawModel, d: &mut Vec<Diagnostic>| {
                    self.downgrade_target(file, m, providers, money, main_price, d)
                };
                let mut diags = Vec::new();
                let compiled = budget::compile_budget(
                    file,
                    b,
                    format!("pipeline:{}", raw.name.value),
                    &mut diags,
                    &mut downgrade,
                );
                ok &= compiled.is_some();
                self.diags.extend(diags);
                compiled
            }
        };
        let provider = provider?;
        if let Some(w) = &provider.missing_key
            && !self.diags.contains(w)
        {
            self.diags.push(w.clone());
        }
        if !ok {
            return None;
        }
        Some(Pipeline {
            price,
            budget,
            name: raw.name.value,
            description: raw.description,
            provider_name: raw.model.provider.value,
            provider: provider.provider.clone(),
            model: raw.model.name.value,
            temperature: raw.model.temperature.map(|t| t.value),
            system: raw.system,
            max_tokens: max_tokens as u32,
            timeouts,
        })
    }
}

fn valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}
