//! Prometheus metrics (`GET /metrics`): requests, tokens, cost, time to
//! first token, stream duration, active streams, budget use and provider
//! usage that could not be believed, and trace spans dropped.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub pipeline: String,
    pub model: String,
    pub status: String,
    /// The API key's declared name; empty without keys.
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub pipeline: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub pipeline: String,
    pub model: String,
    pub kind: &'static str,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub pipeline: String,
    pub model: String,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `failed` (the previous configuration kept).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    /// `missing`, `unknown` (401) or `forbidden` (403).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnClosedLabels {
    /// `header_timeout`, `write_timeout` or `evicted` (a reserve
    /// connection closed to make room).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnomalyLabels {
    pub pipeline: String,
    pub model: String,
    /// What was wrong: `negative`, `above_max_tokens`, `above_prompt_size`,
    /// `above_bytes_received`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `queue_full` (the export queue could not take it) or
    /// `export_failed` (its export failed or timed out).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScopeLabels {
    pub scope: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub tokens: Family<TokenLabels, Counter>,
    pub cost_micros: Family<CostLabels, Counter>,
    pub ttft: Family<ModelLabels, Histogram>,
    pub duration: Family<ModelLabels, Histogram>,
    pub active_streams: Family<PipelineLabels, Gauge>,
    /// Every pipeline's active streams together (not exported: the
    /// console's "streaming now").
    pub streams_now: Gauge,
    pub budget_used: Family<ScopeLabels, Gauge<f64, AtomicU64>>,
    pub usage_anomalies: Family<AnomalyLabels, Counter>,
    pub auth_refusals: Family<AuthLabels, Counter>,
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// The configuration served: 1 at start, one more per reload.
    pub config_version: Gauge,
    /// Client connections open now, reserve ones included.
    pub connections_open: Gauge,
    /// Connections accepted past `max_connections`, into the reserve.
    pub connections_over_capacity: Counter,
    /// Connections the server closed on its own, by reason.
    pub connections_closed: Family<ConnClosedLabels, Counter>,
    /// Finished spans that never reached the collector, by reason.
    pub trace_spans_dropped: Family<DropLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost_micros = Family::<CostLabels, Counter>::default();
        let ttft = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let duration = Family::<ModelLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let active_streams = Family::<PipelineLabels, Gauge>::default();
        let budget_used = Family::<ScopeLabels, Gauge<f64, AtomicU64>>::default();
        let usage_anomalies = Family::<AnomalyLabels, Counter>::default();
        let auth_refusals = Family::<AuthLabels, Counter>::default();
        let config_reloads = Family::<ReloadLabels, Counter>::default();
        let config_version = Gauge::default();
        config_version.set(1);
        let connections_open = Gauge::default();
        let connections_over_capacity = Counter::default();
        let connections_closed = Family::<ConnClosedLabels, Counter>::default();
        registry.register(
            "connections_open",
            "Client connections open now, reserve ones included",
            connections_open.clone(),
        );
        registry.register(
            "connections_over_capacity",
            "Connections accepted past max_connections: they answer health checks only",
            connections_over_capacity.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed by the server: header_timeout, write_timeout, evicted",
            connections_closed.clone(),
        );
        let trace_spans_dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Finished trace spans that were not exported: queue_full or export_failed",
            trace_spans_dropped.clone(),
        );
        registry.register(
            "config_reloads",
            "Reloads of the configuration: ok, or failed (the previous one kept)",
            config_reloads.clone(),
        );
        registry.register(
            "config_version",
            "The configuration served: 1 at start, one more per reload",
            config_version.clone(),
        );
        registry.register(
            "requests",
            "Requests by pipeline, model and final status",
            requests.clone(),
        );
        registry.register("tokens", "Prompt and completion tokens", tokens.clone());
        registry.register(
            "cost_micro_usd",
            "Cost in micro-dollars",
            cost_micros.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "From request start to the first upstream token",
            ttft.clone(),
        );
        registry.register(
            "stream_duration_seconds",
            "Whole request duration",
            duration.clone(),
        );
        registry.register(
            "active_streams",
            "Requests currently running",
            active_streams.clone(),
        );
        registry.register(
            "budget_used_ratio",
            "Spent fraction of today's budget, by scope",
            budget_used.clone(),
        );
        registry.register(
            "usage_anomalies",
            "Provider usage figures that could not be believed, by kind",
            usage_anomalies.clone(),
        );
        registry.register(
            "auth_refusals",
            "Requests refused for their API key: missing, unknown (401) or forbidden (403)",
            auth_refusals.clone(),
        );
        Metrics {
            registry,
            connections_open,
            connections_over_capacity,
            connections_closed,
            auth_refusals,
            config_reloads,
            config_version,
            requests,
            tokens,
            cost_micros,
            ttft,
            duration,
            active_streams,
            streams_now: Gauge::default(),
            budget_used,
            usage_anomalies,
            trace_spans_dropped,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
