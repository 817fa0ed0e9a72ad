//! The Anthropic Messages API client (`POST {base_url}/messages`, streamed).
//!
//! Same connection model as the OpenAI client (see [`super::http`]): a
//! pooled or new connection per call, owned by the returned stream, so
//! dropping the stream closes the socket at once, unless it ended cleanly.

use std::pin::Pin;

use http::{HeaderName, HeaderValue, Uri};

use super::anthropic_wire::{self, AnthropicDecoder};
use super::http::{ApiKey, Endpoint};
use super::secrets::Secrets;
use super::{ChunkStream, Provider, ProviderError, ProviderRequest};

/// Where `kind: anthropic` points when settings give no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com/v1";

/// The API version this client speaks (event names, error shapes).
pub const API_VERSION: &str = "2023-06-01";

pub struct AnthropicProvider {
    name: String,
    /// `/messages` under the base URL's path.
    endpoint: Endpoint,
    key: ApiKey,
}

impl AnthropicProvider {
    pub fn new(
        name: &str,
        base_url: Uri,
        api_key: Option<String>,
        api_key_env: Option<String>,
    ) -> Self {
        let provider = Self {
            name: name.to_string(),
            endpoint: Endpoint::new(&base_url, "/messages"),
            key: ApiKey {
                key: api_key,
                env: api_key_env,
            },
        };
        // Its own key is always scrubbed, even before `with_secrets`.
        provider.with_secrets(Secrets::new())
    }

    /// Scrubs every secret of `secrets` (those of the whole configuration)
    /// from what this provider sends back; its own key is added to them.
    pub fn with_secrets(mut self, secrets: Secrets) -> Self {
        if let Some(key) = &self.key.key {
            secrets.add_key(key);
        }
        self.endpoint = self.endpoint.with_secrets(secrets);
        self
    }
}

impl Provider for AnthropicProvider {
    fn wire(&self) -> Option<super::Wire> {
        Some(super::Wire::Anthropic)
    }

    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>> {
        Box::pin(async move {
            let key = self.key.header(&self.name, "")?;
            let body = serde_json::to_vec(&anthropic_wire::request_body(&request))
                .map_err(|e| ProviderError::Config(format!("cannot encode request: {e}")))?;
            let version = (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(API_VERSION),
            );
            let key = key.map(|v| (HeaderName::from_static("x-api-key"), v));
            let headers = std::iter::once(version).chain(key);
            let req = self
                .endpoint
                .post(headers.chain(request.trace_headers.clone()), body);
            self.endpoint
                .stream(
                    req,
                    request.connect_timeout,
                    AnthropicDecoder::new(),
                    anthropic_wire::summarize_error_body,
                )
                .await
        })
    }
}
