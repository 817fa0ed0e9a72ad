//! What a request asks of every model call, checked before it runs: the
//! params (with the pipeline's defaults) and the tools offered (the
//! pipeline's, then the client's); whether the pipeline's `clients:`
//! rules and every model that may answer can take them (a 400 naming the
//! field as the client's API does); and the thinking budget a call that
//! `max_total_tokens` squeezed can still send.

use std::sync::Arc;

use crate::budget::OnExhausted;
use crate::compile::Pipeline;
use crate::compile::clients::FieldNames;
use crate::provider::{Message, Params, ToolSpec};

/// What every model call of a request sends besides its messages.
pub(crate) struct Ask {
    pub params: Arc<Params>,
    /// The pipeline's tools, then the client's.
    pub tools: Arc<[ToolSpec]>,
}

impl Ask {
    pub(super) fn new(pipeline: &Pipeline, params: Params, client_tools: Vec<ToolSpec>) -> Ask {
        let mut params = params;
        // Anthropic refuses a temperature with extended thinking: the
        // pipeline's default does not apply then (a client's own is sent,
        // and the provider's answer says what it thinks of it).
        if params.temperature.is_none() && params.thinking.is_none() {
            params.temperature = pipeline.temperature;
        }
        let tools: Arc<[ToolSpec]> = if client_tools.is_empty() {
            pipeline.tool_specs.clone()
        } else {
            pipeline
                .tool_specs
                .iter()
                .cloned()
                .chain(client_tools)
                .collect()
        };
        Ask {
            params: Arc::new(params),
            tools,
        }
    }

    /// Whether a call of `name` goes back to the client: a tool the
    /// client brought, or any tool when the pipeline runs none. A name
    /// nobody declared is answered by the pipeline ("no such tool", so
    /// the model can correct itself) when it has tools.
    pub(crate) fn is_for_client(&self, name: &str, pipeline: &Pipeline) -> bool {
        if pipeline.tools.is_empty() {
            return true;
        }
        let client = self
            .tools
            .get(pipeline.tool_specs.len()..)
            .unwrap_or_default();
        client.iter().any(|t| t.name == name) && !pipeline.tools.iter().any(|t| t.name() == name)
    }
}

/// The smallest extended-thinking budget Anthropic takes.
pub const THINKING_MIN_BUDGET: u64 = 1024;

/// `params` for a model call that may generate `max_tokens`. Anthropic
/// wants extended thinking's `budget_tokens` below `max_tokens`; a call
/// that `max_total_tokens` squeezed under the client's budget thinks with
/// what is left (`max_tokens - 1`). Thinking cannot be dropped instead: a
/// turn that began with thinking must keep it through its tool rounds.
/// With no budget Anthropic takes left (under 1,025 tokens), Err says so.
pub(crate) fn fit_thinking(params: &Arc<Params>, max_tokens: u32) -> Result<Arc<Params>, String> {
    let Some(thinking) = &params.thinking else {
        return Ok(params.clone());
    };
    let Some(budget) = thinking["budget_tokens"].as_u64() else {
        return Ok(params.clone());
    };
    let max = u64::from(max_tokens);
    if budget < max {
        return Ok(params.clone());
    }
    if max <= THINKING_MIN_BUDGET {
        return Err(format!(
            "thinking.budget_tokens: this model call may generate only {max_tokens} tokens of the pipeline's max_total_tokens, too few for extended thinking (a budget of at least {THINKING_MIN_BUDGET} tokens, below max_tokens)"
        ));
    }
    let mut fitted = Params::clone(params);
    if let Some(t) = fitted.thinking.as_mut() {
        t["budget_tokens"] = serde_json::Value::from(max - 1);
    }
    Ok(Arc::new(fitted))
}

/// Whether `pipeline` can take a request: what its `clients:` rules let a
/// client set, and what every model that may answer can be sent
/// ([`check_params`]). Err: the field at fault and why, for a 400, in the
/// words of the client's API (`names`).
pub fn check_request(
    pipeline: &Pipeline,
    params: &Params,
    tools: &[ToolSpec],
    messages: &[Message],
    names: &FieldNames,
) -> Result<(), (String, String)> {
    pipeline
        .clients
        .check(&pipeline.name, params, tools, messages, names)?;
    // A tool loop per choice is not something Sluice runs, and the
    // client's calls of several answers could not be told apart.
    let n = params.choices();
    if n > 1 && (!tools.is_empty() || !pipeline.tools.is_empty()) {
        let whose = if tools.is_empty() {
            format!("pipeline \"{}\" has tools", pipeline.name)
        } else {
            "the request brings tools".to_string()
        };
        return Err((
            names.field("n"),
            format!(
                "n = {n} cannot be combined with tools ({whose}): ask for one choice, or call a pipeline without tools"
            ),
        ));
    }
    check_params(pipeline, params, names)
}

/// Whether every model that may answer `pipeline` (its own, its
/// fallbacks, a budget's downgrade) can be sent `params`. Err names the
/// first field one cannot take (as `names` says the client sent it), and
/// why, for a 400.
pub fn check_params(
    pipeline: &Pipeline,
    params: &Params,
    names: &FieldNames,
) -> Result<(), (String, String)> {
    let downgrades = pipeline
        .budget
        .iter()
        .chain(pipeline.global_budget.iter())
        .filter_map(|b| match &b.on_exhausted {
            OnExhausted::Downgrade(d) => Some((d.provider_name.as_str(), &d.provider)),
            OnExhausted::Reject => None,
        });
    let models = std::iter::once((pipeline.provider_name.as_str(), &pipeline.provider))
        .chain(
            pipeline
                .fallbacks
                .iter()
                .map(|f| (f.provider_name.as_str(), &f.provider)),
        )
        .chain(downgrades);
    for (name, provider) in models {
        if let Some(wire) = provider.wire()
            && let Some((field, why)) = params.unsupported_by(wire)
        {
            let field = names.field(field);
            return Err((
                field.clone(),
                format!(
                    "\"{field}\" cannot be honoured by pipeline \"{}\": its provider \"{name}\" speaks the {} API ({why})",
                    pipeline.name,
                    wire.as_str()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thinking(budget: u64) -> Arc<Params> {
        Arc::new(Params {
            thinking: Some(serde_json::json!({"type": "enabled", "budget_tokens": budget})),
            ..Params::default()
        })
    }

    #[test]
    fn a_squeezed_call_thinks_with_what_is_left() {
        let budget = |p: Arc<Params>| p.thinking.as_ref().unwrap()["budget_tokens"].as_u64();
        // Room enough: the same params, not a copy.
        let asked = thinking(2000);
        assert!(Arc::ptr_eq(&fit_thinking(&asked, 4000).unwrap(), &asked));
        // Squeezed: one below max_tokens, down to Anthropic's least.
        assert_eq!(budget(fit_thinking(&asked, 2000).unwrap()), Some(1999));
        assert_eq!(budget(fit_thinking(&asked, 1025).unwrap()), Some(1024));
        let why = fit_thinking(&asked, 1024).unwrap_err();
        assert!(why.starts_with("thinking.budget_tokens:"), "{why}");
        // Nothing to fit: no thinking, or thinking without a budget.
        let plain = Arc::new(Params::default());
        assert!(fit_thinking(&plain, 1).is_ok());
        let adaptive = Arc::new(Params {
            thinking: Some(serde_json::json!({"type": "adaptive"})),
            ..Params::default()
        });
        assert!(fit_thinking(&adaptive, 1).is_ok());
    }
}
