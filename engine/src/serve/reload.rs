//! Reloading the configuration without a restart.
//!
//! On SIGHUP, and when a YAML file of the pipelines directory changes, the
//! whole directory is compiled again (off the async workers). A
//! configuration with any error is not served: the previous one stays,
//! and every diagnostic is logged, counted and shown by `GET /v1/config`.
//! A good one becomes a new [`Shared`] (the same request context, ledger
//! and settings, new pipelines and keys) swapped in at once: requests that
//! arrive next use it, open streams finish on the one they started with
//! (they hold its pipeline), budgets and rate buckets carry over (they
//! live in the ledger), and a key that is gone is refused from its next
//! request. What only a restart can change (the listen address, the
//! ledger, server settings but `server.cors`, the alert webhook,
//! telemetry) is reported, not applied.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Shared;
use crate::compile::{Catalog, ServerSettings};
use crate::config::Diagnostic;
use crate::metrics::ReloadLabels;

/// Waits this long after a file event for more (an editor writes a file
/// in several steps; `git checkout` touches many).
const SETTLE: Duration = Duration::from_millis(300);

/// What was loaded at start that a reload cannot change.
struct Fixed {
    addr: SocketAddr,
    storage: String,
    alert_webhook: Option<String>,
    telemetry: Option<crate::telemetry::TraceSettings>,
    settings: ServerSettings,
}

/// The outcome of the last reload, for `GET /v1/config`.
#[derive(Default)]
struct Last {
    at_ms: i64,
    ok: bool,
    diagnostics: Vec<String>,
    restart_needed: Vec<String>,
}

/// Which configuration is live and how the last reload went; one for the
/// life of the server, shared by every version of [`Shared`].
pub(crate) struct Status {
    fixed: Fixed,
    last: Mutex<Option<Last>>,
    loaded_at_ms: Mutex<i64>,
}

impl Status {
    pub(crate) fn new(catalog: &Catalog, addr: SocketAddr, now_ms: i64) -> Status {
        Status {
            fixed: Fixed {
                addr,
                storage: catalog.storage.clone(),
                alert_webhook: catalog.alert_webhook.clone(),
                telemetry: catalog.telemetry.clone(),
                settings: catalog.server.clone(),
            },
            last: Mutex::new(None),
            loaded_at_ms: Mutex::new(now_ms),
        }
    }

    /// `GET /v1/config`: the live version, its pipelines, the last reload.
    pub(crate) fn report(&self, live: &Shared) -> Value {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let loaded = *self.loaded_at_ms.lock().unwrap_or_else(|p| p.into_inner());
        json!({
            "version": live.version,
            "loaded_at": crate::ledger::money::rfc3339(loaded),
            "pipelines": live.pipelines.keys().collect::<Vec<_>>(),
            "keys": live.auth.len(),
            "last_reload": last.as_ref().map(|l| json!({
                "at": crate::ledger::money::rfc3339(l.at_ms),
                "ok": l.ok,
                "diagnostics": l.diagnostics,
                "restart_needed": l.restart_needed,
            })),
        })
    }
}

/// Swaps configurations into a running server.
#[derive(Clone)]
pub struct ReloadHandle {
    pub(super) live: Arc<ArcSwap<Shared>>,
}

impl ReloadHandle {
    /// The version being served.
    pub fn version(&self) -> u64 {
        self.live.load().version
    }

    /// Applies the result of compiling the pipelines directory again:
    /// swaps a good configuration in, keeps the live one otherwise.
    /// Returns the version served afterwards.
    pub fn apply(&self, compiled: Result<Catalog, Vec<Diagnostic>>) -> u64 {
        let old = self.live.load_full();
        let status = old.reloads.clone();
        let now = old.run.ledger.now_ms();
        let metrics = &old.run.metrics;
        let outcome = compiled.and_then(|catalog| {
            // Revoking the last key must not open a server that listens
            // beyond loopback.
            match super::server::exposure_allowed(&catalog.auth, status.fixed.addr) {
                Ok(()) => Ok(catalog),
                Err(e) => Err(vec![Diagnostic::error(
                    Path::new(crate::config::SETTINGS_FILE),
                    crate::config::Pos::START,
                    e.to_string(),
                )]),
            }
        });
        let catalog = match outcome {
            Ok(c) => c,
            Err(diags) => {
                let errors: Vec<String> = diags
                    .iter()
                    .filter(|d| d.is_error())
                    .map(ToString::to_string)
                    .collect();
                for e in &errors {
                    error!("reload refused: {e}");
                }
                warn!(
                    version = old.version,
                    errors = errors.len(),
                    "the new configuration has errors; still serving the previous one"
                );
                metrics
                    .config_reloads
                    .get_or_create(&ReloadLabels { result: "failed" })
                    .inc();
                *status.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Last {
                    at_ms: now,
                    ok: false,
                    diagnostics: errors,
                    restart_needed: Vec::new(),
                });
                return old.version;
            }
        };
        for w in &catalog.warnings {
            warn!("{w}");
        }
        let restart_needed = restart_needed(&status.fixed, &catalog);
        for what in &restart_needed {
            warn!("{what} changed in the configuration; it takes a restart to apply");
        }
        let version = old.version + 1;
        let names: Vec<&String> = catalog.pipelines.keys().collect();
        info!(version, pipelines = ?names, keys = catalog.auth.len(), "configuration reloaded");
        let next = Shared {
            version,
            pipelines: catalog.pipelines,
            auth: catalog.auth,
            // Server settings wait for a restart, but for which pages may
            // call from a browser.
            settings: ServerSettings {
                cors: catalog.server.cors.clone(),
                ..old.settings.clone()
            },
            run: old.run.clone(),
            max_connections: old.max_connections,
            reloads: status.clone(),
            ready: old.ready.clone(),
        };
        self.live.store(Arc::new(next));
        metrics
            .config_reloads
            .get_or_create(&ReloadLabels { result: "ok" })
            .inc();
        metrics.config_version.set(version as i64);
        *status
            .loaded_at_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = now;
        *status.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Last {
            at_ms: now,
            ok: true,
            diagnostics: Vec::new(),
            restart_needed,
        });
        version
    }
}

/// What differs from what the server started with and cannot be applied.
fn restart_needed(fixed: &Fixed, catalog: &Catalog) -> Vec<String> {
    let (old, new) = (&fixed.settings, &catalog.server);
    let mut out = Vec::new();
    let mut check = |changed: bool, what: &str| {
        if changed {
            out.push(what.to_string());
        }
    };
    check(old.listen != new.listen, "server.listen");
    check(
        old.max_body_bytes != new.max_body_bytes,
        "server.max_body_bytes",
    );
    check(old.keepalive != new.keepalive, "server.keepalive");
    check(
        old.shutdown_grace != new.shutdown_grace,
        "server.shutdown_grace",
    );
    check(
        old.connections != new.connections,
        "server connection limits",
    );
    check(fixed.storage != catalog.storage, "storage");
    check(fixed.alert_webhook != catalog.alert_webhook, "alerts");
    check(fixed.telemetry != catalog.telemetry, "telemetry");
    out
}

/// Reloads `dir` on SIGHUP and whenever a file in it changes, until
/// `stop`. A watcher that cannot start leaves SIGHUP (said in the log).
pub async fn watch(dir: PathBuf, handle: ReloadHandle, stop: CancellationToken) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Only what compiling reads: YAML files (a tool database kept
            // beside them changes without being configuration).
            let yaml =
                |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            if ev.is_ok_and(|e| !e.kind.is_access() && e.paths.iter().any(|p| yaml(p))) {
                let _ = tx.try_send(());
            }
        })
        .and_then(|mut w| {
            use notify::Watcher;
            w.watch(&dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        })
    };
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, dir = %dir.display(), "cannot watch the pipelines directory; reload with SIGHUP");
            None
        }
    };
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangup => info!("SIGHUP: reloading the configuration"),
            Some(()) = rx.recv() => {
                // Let the burst of events of one change pass.
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                info!("the pipelines directory changed: reloading the configuration");
            }
        }
        let d = dir.clone();
        let compiled = match tokio::task::spawn_blocking(move || crate::compile::load_dir(&d)).await
        {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "compiling the configuration failed");
                continue;
            }
        };
        handle.apply(compiled);
    }
}
