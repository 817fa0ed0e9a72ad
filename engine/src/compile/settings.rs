//! Compiling `settings.yaml`: server settings, providers, ledger and alerts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;

impl Cx {
    pub(super) fn server(&mut self, file: &Path, raw: &RawSettings) -> ServerSettings {
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
        let limits = &mut out.connections;
        for (raw, what, slot) in [
            (
                &s.header_timeout,
                "header_timeout",
                &mut limits.header_timeout,
            ),
            (&s.body_timeout, "body_timeout", &mut limits.body_timeout),
            (&s.idle_timeout, "idle_timeout", &mut limits.idle_timeout),
            (&s.write_timeout, "write_timeout", &mut limits.write_timeout),
        ] {
            if let Some(d) = raw.as_ref().and_then(|r| self.duration(file, r, what)) {
                *slot = d;
            }
        }
        if let Some(n) = self.count(file, &s.max_connections, "max_connections") {
            limits.max_connections = Some(n);
        }
        if let Some(n) = self.count(file, &s.reserved_connections, "reserved_connections") {
            limits.reserved_connections = n;
        }
        out.cors = s
            .cors
            .as_ref()
            .and_then(|c| self.cors(file, c))
            .map(Arc::new);
        out
    }

    /// A count of at least one.
    pub(super) fn count(
        &mut self,
        file: &Path,
        raw: &Option<Spanned<u64>>,
        what: &str,
    ) -> Option<usize> {
        let raw = raw.as_ref()?;
        if raw.value == 0 {
            self.error(file, raw.pos, format!("{what} must be at least 1"));
            return None;
        }
        Some(usize::try_from(raw.value).unwrap_or(usize::MAX))
    }

    pub(super) fn providers(
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
                        Ok(v) if !v.is_empty() => {
                            self.secrets.add_key(&v);
                            api_key = Some(v);
                        }
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
                let secrets = self.secrets.clone();
                let provider: Arc<dyn Provider> = if kind == "anthropic" {
                    Arc::new(
                        AnthropicProvider::new(&name.value, uri, api_key, key_env)
                            .with_secrets(secrets),
                    )
                } else {
                    Arc::new(
                        OpenAiProvider::new(&name.value, uri, api_key, key_env)
                            .with_secrets(secrets),
                    )
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

    pub(super) fn ledger_settings(
        &mut self,
        file: &Path,
        raw: &RawSettings,
    ) -> (String, Option<String>) {
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
        // Like every path in settings, a relative SQLite file is relative
        // to the settings file (the default one too).
        let base = file.parent().unwrap_or(Path::new(""));
        let storage = match crate::ledger::resolve_sqlite_url(&storage, base) {
            Some(resolved) => resolved,
            None => {
                self.error(
                    file,
                    Pos::START,
                    "the settings file's folder is not valid UTF-8, so a relative storage path cannot be resolved; give an absolute sqlite:PATH",
                );
                storage
            }
        };
        // A Postgres URL may carry a password: scrubbed like an API key's
        // echo from what providers send back (the set is shared, so
        // providers compiled before this see it too).
        if storage.contains("://") {
            self.secrets.add_url(&storage);
        }
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
                // Webhook URLs carry their token in the path.
                self.secrets.add_url(&url);
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
}
