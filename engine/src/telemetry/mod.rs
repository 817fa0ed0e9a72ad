//! Traces: OpenTelemetry spans of each request, exported over OTLP/HTTP
//! (protobuf) to a collector.
//!
//! With `telemetry:` in `settings.yaml` (or an OTLP endpoint in the
//! environment) the server holds one [`Telemetry`]; without, it holds
//! none, and a request's [`Trace`] is an empty `Option`: no span, no
//! attribute, no clock read, one branch at each place a span could be.
//!
//! A request is one SERVER span (`chat {pipeline}`), continuing the
//! client's W3C `traceparent` when it sent one, with a CLIENT span per
//! model call (every attempt, retry and fallback, and every round of a
//! tool loop) and an INTERNAL span per tool execution, named and
//! attributed by the OpenTelemetry GenAI semantic conventions. Each model
//! call sends its own span's `traceparent` to the provider.
//!
//! Finished spans go to a bounded queue ([`batch`]) that a thread of its
//! own exports in batches: a collector that is slow or down never holds a
//! request up, and what the queue cannot take, or an export loses, is
//! counted in `sluice_trace_spans_dropped_total`.

mod batch;
mod client;
mod trace;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

pub(crate) use trace::{CallInfo, Outcome, Trace};

use crate::metrics::Metrics;

/// What `compile` made of `telemetry:` and the `OTEL_*` variables.
#[derive(Clone, PartialEq)]
pub struct TraceSettings {
    /// The traces URL itself (`.../v1/traces`).
    pub endpoint: Uri,
    /// Sent with every export; values are secrets.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub service_name: String,
    pub sampling: Sampling,
    /// Prompts and completions as span attributes.
    pub capture_content: bool,
    /// Longest one export may take.
    pub timeout: Duration,
    pub queue_size: usize,
    pub batch_size: usize,
    pub batch_delay: Duration,
}

impl std::fmt::Debug for TraceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("TraceSettings")
            .field("endpoint_host", &self.endpoint.host())
            .field("headers", &header_names)
            .field("service_name", &self.service_name)
            .field("sampling", &self.sampling)
            .field("capture_content", &self.capture_content)
            .field("timeout", &self.timeout)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("batch_delay", &self.batch_delay)
            .finish()
    }
}

/// Which traces are kept: a fraction of new ones (by trace id), and, when
/// `parent_based`, whatever a client's `traceparent` decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub parent_based: bool,
    pub ratio: f64,
}

impl Sampling {
    pub const ALWAYS: Sampling = Sampling {
        parent_based: true,
        ratio: 1.0,
    };

    fn sampler(self) -> Sampler {
        let root = if self.ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if self.ratio <= 0.0 {
            Sampler::AlwaysOff
        } else {
            Sampler::TraceIdRatioBased(self.ratio)
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// The server's tracer and the export thread behind it.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    capture_content: bool,
    /// How long shutdown waits for the last export.
    timeout: Duration,
}

/// Where a request's trace starts: the client's context (when it sent a
/// valid `traceparent`) and the moment its head was read.
#[derive(Debug, Clone)]
pub struct Incoming {
    parent: Context,
    at: SystemTime,
}

impl Telemetry {
    /// Starts the export thread. Fails only when the exporter cannot be
    /// built (a configuration `compile` did not catch).
    pub fn start(settings: &TraceSettings, metrics: &Metrics) -> anyhow::Result<Arc<Telemetry>> {
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let exporter = client::exporter(settings)?;
        let processor = batch::BatchProcessor::start(
            exporter,
            &resource,
            settings,
            metrics.trace_spans_dropped.clone(),
        )?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampling.sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sluice");
        Ok(Arc::new(Telemetry {
            provider,
            tracer,
            capture_content: settings.capture_content,
            timeout: settings.timeout,
        }))
    }

    /// The client's trace context from `traceparent` (and `tracestate`);
    /// an absent or malformed one starts a new trace.
    pub fn incoming(&self, headers: &HeaderMap) -> Incoming {
        let parent = if headers.contains_key("traceparent") {
            TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
        } else {
            Context::new()
        };
        Incoming {
            parent,
            at: SystemTime::now(),
        }
    }

    /// Exports what is queued (within the export timeout) and stops the
    /// export thread. Called once the request tasks are over.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown_with_timeout(self.timeout) {
            tracing::warn!(error = %e, "the last traces could not be exported");
        }
    }
}
