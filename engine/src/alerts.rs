//! Budget alerts: when a scope's spend crosses an `alert_at` threshold, one
//! webhook POST (Slack-compatible `text` plus structured fields), once per
//! scope, threshold and UTC day. The claim is persisted in the ledger
//! before delivery, so a restart never fires it again; delivery retries
//! with backoff in a tracked background task and never blocks a request.
//!
//! The same webhook hears of a provider reporting impossible usage (see
//! `run::usage_check`): that is a fault someone must look at (a broken
//! provider, a proxy rewriting bodies, an attack on the budgets), and
//! budgets alone would not show it, since the charge is clamped. It fires
//! once per pipeline and UTC day, claimed in the ledger like a threshold,
//! so a provider that reports garbage on every request cannot flood the
//! webhook; every occurrence is still logged, counted in
//! `sluice_usage_anomalies_total` and flagged on its ledger row.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};
use serde_json::json;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::budget::Budget;
use crate::ledger::money::format_usd;
use crate::ledger::{Ledger, Spend};
use crate::provider::http::Endpoint;

/// Attempts per alert, with exponential backoff between them.
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The threshold under which usage alerts are claimed: they have none.
const ANOMALY_PPM: i64 = 0;

#[derive(Clone)]
pub struct Alerts {
    ledger: Arc<Ledger>,
    webhook: Option<Endpoint>,
    tracker: TaskTracker,
}

impl Alerts {
    pub fn new(ledger: Arc<Ledger>, webhook: Option<&str>, tracker: TaskTracker) -> Self {
        let webhook = webhook
            .and_then(|u| u.parse::<Uri>().ok())
            .map(|u| Endpoint::url(&u));
        Alerts {
            ledger,
            webhook,
            tracker,
        }
    }

    /// Fires every threshold of `budget` that `spend` has reached and that
    /// has not fired yet today.
    pub async fn check(&self, budget: &Budget, day: &str, spend: Spend) {
        if budget.limit_micros <= 0 {
            return;
        }
        // A monthly budget's thresholds fire once a month.
        let day = crate::ledger::period(&budget.scope, day);
        for &ppm in &budget.alert_at_ppm {
            // spent / daily >= ppm / 1e6, in integers.
            let reached = i128::from(spend.spent_micros) * 1_000_000
                >= i128::from(ppm) * i128::from(budget.limit_micros);
            if !reached {
                break;
            }
            match self.ledger.claim_alert(&budget.scope, day, ppm).await {
                Ok(true) => self.deliver(budget, day, spend, ppm),
                Ok(false) => {}
                Err(e) => warn!(error = %e, scope = %budget.scope, "cannot record a budget alert"),
            }
        }
    }

    /// Tells the webhook, once per pipeline and day, that a provider
    /// reported usage that could not be believed (`why`).
    pub async fn usage_anomaly(&self, pipeline: &str, model: &str, day: &str, why: &str) {
        let scope = format!("usage_anomaly:{pipeline}");
        match self.ledger.claim_alert(&scope, day, ANOMALY_PPM).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                warn!(error = %e, %scope, "cannot record a usage alert");
                return;
            }
        }
        let text = format!(
            "Sluice usage alert: the provider of pipeline {pipeline} (model {model}) reported usage that cannot be right on {day}: {why}. It was billed within the request's bounds; further reports today are only logged and counted"
        );
        warn!(pipeline, model, day, "{text}");
        let body = json!({
            "text": text,
            "kind": "usage_anomaly",
            "pipeline": pipeline,
            "model": model,
            "day": day,
            "reason": why,
        });
        self.post(body, scope, day.to_string(), ANOMALY_PPM);
    }

    fn deliver(&self, budget: &Budget, day: &str, spend: Spend, ppm: i64) {
        let percent = ppm as f64 / 10_000.0;
        let text = format!(
            "Sluice budget alert: {} has spent ${} of its ${} {} budget in {day} ({percent:.0}% threshold reached)",
            budget.scope,
            format_usd(spend.spent_micros),
            format_usd(budget.limit_micros),
            budget.period_name(),
        );
        info!(scope = %budget.scope, day, threshold = percent / 100.0, "{text}");
        let body = json!({
            "text": text,
            "scope": budget.scope,
            "day": day,
            "spent_usd": format_usd(spend.spent_micros),
            "period": budget.period_name(),
            "budget_usd": format_usd(budget.limit_micros),
            "spent_micros": spend.spent_micros,
            "budget_micros": budget.limit_micros,
            "threshold": percent / 100.0,
        });
        self.post(body, budget.scope.clone(), day.to_string(), ppm);
    }

    /// Posts `body` to the webhook in the background, with retries; marks
    /// the claim `(scope, day, ppm)` delivered once it is.
    fn post(&self, body: serde_json::Value, scope: String, day: String, ppm: i64) {
        let Some(endpoint) = self.webhook.clone() else {
            return;
        };
        let ledger = self.ledger.clone();
        self.tracker.spawn(async move {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=ATTEMPTS {
                let req = endpoint.post(
                    std::iter::empty::<(HeaderName, HeaderValue)>(),
                    bytes.clone(),
                );
                match endpoint.send(req, CALL_TIMEOUT).await {
                    Ok(status) if (200..300).contains(&status) => {
                        if let Err(e) = ledger.mark_alert_delivered(&scope, &day, ppm).await {
                            warn!(error = %e, "cannot mark a budget alert delivered");
                        }
                        return;
                    }
                    Ok(status) => warn!(attempt, status, %scope, "alert webhook refused the alert"),
                    Err(e) => warn!(attempt, error = %e, %scope, "alert webhook unreachable"),
                }
                if attempt < ATTEMPTS {
                    // Jitter keeps many instances from retrying in step.
                    let jitter = Duration::from_millis(
                        u64::from(rand_u16()) % (backoff.as_millis() as u64 / 2 + 1),
                    );
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
            warn!(%scope, %day, "giving up on an alert after {ATTEMPTS} attempts");
        });
    }
}

fn rand_u16() -> u16 {
    let b = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([b[0], b[1]])
}
