//! The OTLP/HTTP exporter (`opentelemetry-otlp`, protobuf) on Sluice's own
//! HTTP/1.1 client (`provider::http`: plain or rustls TLS), so that traces
//! bring no second HTTP or TLS stack.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, header};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};

use super::TraceSettings;
use crate::provider::http::Endpoint;

/// Posts each export on a new connection to the collector, bounded as a
/// whole by the export timeout; only the status is read back.
struct OtlpClient {
    endpoint: Endpoint,
    /// The configured headers: the exporter's own copies (which it also
    /// reads from the environment) are not used, so the file's win.
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: std::time::Duration,
}

impl std::fmt::Debug for OtlpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpClient").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/x-protobuf")
            .to_string();
        let out = self.endpoint.post_as(
            &content_type,
            "application/x-protobuf",
            self.headers.iter().cloned(),
            request.into_body().to_vec(),
        );
        let status = self.endpoint.send(out, self.timeout).await?;
        Ok(Response::builder().status(status).body(Bytes::new())?)
    }
}

/// The OTLP/HTTP protobuf span exporter for `settings`.
pub(super) fn exporter(
    settings: &TraceSettings,
) -> anyhow::Result<opentelemetry_otlp::SpanExporter> {
    let client = OtlpClient {
        endpoint: Endpoint::url(&settings.endpoint),
        headers: settings.headers.clone(),
        timeout: settings.timeout,
    };
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(settings.endpoint.to_string())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the trace exporter: {e}"))
}
