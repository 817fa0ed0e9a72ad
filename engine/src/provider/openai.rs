//! The OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama,
//! llama.cpp, Groq...).
//!
//! Each call takes an idle keep-alive connection of this provider or opens
//! one, and the returned stream owns it (see [`super::http`]): dropping the
//! stream closes the socket at once, unless the stream ended cleanly.

use std::pin::Pin;

use http::{Uri, header};

use super::http::{ApiKey, Endpoint};
use super::openai_wire::{self, OpenAiDecoder};
use super::secrets::Secrets;
use super::{ChunkStream, Provider, ProviderError, ProviderRequest};

pub struct OpenAiProvider {
    name: String,
    /// `/chat/completions` under the base URL's path.
    endpoint: Endpoint,
    key: ApiKey,
}

impl OpenAiProvider {
    pub fn new(
        name: &str,
        base_url: Uri,
        api_key: Option<String>,
        api_key_env: Option<String>,
    ) -> Self {
        let provider = Self {
            name: name.to_string(),
            endpoint: Endpoint::new(&base_url, "/chat/completions"),
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

impl Provider for OpenAiProvider {
    fn wire(&self) -> Option<super::Wire> {
        Some(super::Wire::OpenAi)
    }

    fn call(
        &self,
        request: ProviderRequest,
    ) -> Pin<Box<dyn Future<Output = Result<ChunkStream, ProviderError>> + Send + '_>> {
        Box::pin(async move {
            let auth = self.key.header(&self.name, "Bearer ")?;
            let body = serde_json::to_vec(&openai_wire::request_body(&request, true))
                .map_err(|e| ProviderError::Config(format!("cannot encode request: {e}")))?;
            let headers = auth.map(|v| (header::AUTHORIZATION, v));
            let req = self.endpoint.post(
                headers.into_iter().chain(request.trace_headers.clone()),
                body,
            );
            self.endpoint
                .stream(
                    req,
                    request.connect_timeout,
                    OpenAiDecoder::with_choices(request.params.choices()),
                    openai_wire::summarize_error_body,
                )
                .await
        })
    }
}
