//! Whether a provider's reported usage can be believed.
//!
//! A provider's usage decides what a request costs, so a provider (or
//! anything between it and Sluice) that reports ten million tokens for a
//! short answer, or `u64::MAX`, would otherwise spend a day's budget in one
//! request. Each figure is checked against what the request itself bounds:
//!
//! - completion tokens against the `max_tokens` sent for the round: the
//!   provider counts both with its own tokenizer, so an honest report never
//!   exceeds it; a small margin covers providers that count an end-of-turn
//!   token or two more;
//! - prompt tokens against the bytes of the prompt sent (messages, tool
//!   calls and tool definitions): every token of a byte-level BPE (GPT,
//!   Llama 3, Qwen) or of SentencePiece (with byte fallback) covers at least
//!   one byte of the text, so text of N bytes is at most N tokens, plus a
//!   bounded number of template tokens per message and the provider's own
//!   preamble (Anthropic's tool-use system prompt is a few hundred tokens);
//! - completion tokens against the bytes of generated content received,
//!   only where that is sound: reasoning models (OpenAI's o-series, Claude's
//!   summarized thinking) bill tokens they never stream, so bytes received
//!   bound only the *visible* part, and only when the provider says how many
//!   were hidden (`hidden_tokens`). Unknown hidden tokens: no bytes bound,
//!   and `max_tokens` (which does bound hidden tokens) is the check.
//!
//! A figure past its bound is billed at the bound (the most the request
//! could honestly have cost, so the ledger never under-counts); a negative
//! one means nothing and Sluice's own count replaces it (marked estimated).
//! Either way the reason and the provider's exact figures are kept, for the
//! ledger row (`usage_anomaly`), the metric and the alert. Everything here
//! is integer arithmetic that saturates: no report can overflow it.

use crate::provider::{Message, Part, ToolSpec};

/// Template tokens a provider may add per message (role markers,
/// separators, tool-call framing).
const PER_MESSAGE_TOKENS: u64 = 32;
/// Tokens a provider may add to a prompt of its own (system preambles,
/// the tool-use prompt).
const PROMPT_PREAMBLE_TOKENS: u64 = 4_096;
/// Tokens a provider may generate without streaming them as content (an
/// end-of-turn or stop token).
const UNSTREAMED_TOKENS: u64 = 16;

/// What one model call (a round) sent and received, and what its provider
/// reported. Counts are `i128` so that whatever integer a provider sent
/// (negative, or anything up to `u64::MAX`) is carried as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundFacts {
    pub reported_prompt: i128,
    pub reported_completion: i128,
    /// The `max_tokens` sent to the provider for this round.
    pub max_tokens: u64,
    /// Bytes of the prompt sent: see [`prompt_bytes`].
    pub prompt_bytes: u64,
    pub prompt_messages: u64,
    /// Bytes of generated content received (text, tool calls, reasoning).
    pub generated_bytes: u64,
    /// Completion tokens the provider says it did not stream (OpenAI's
    /// `reasoning_tokens`); `None` when it does not say.
    pub hidden_tokens: Option<u64>,
}

/// What was found wrong with a report; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Anomaly {
    Negative,
    AboveMaxTokens,
    AbovePromptSize,
    AboveBytesReceived,
}

impl Anomaly {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Anomaly::Negative => "negative",
            Anomaly::AboveMaxTokens => "above_max_tokens",
            Anomaly::AbovePromptSize => "above_prompt_size",
            Anomaly::AboveBytesReceived => "above_bytes_received",
        }
    }
}

/// The usage to bill and record for a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Some figure is Sluice's own count rather than the provider's.
    pub estimated: bool,
    pub anomalies: Vec<Anomaly>,
    /// Why, with the provider's exact figures (`None`: believed).
    pub reason: Option<String>,
}

/// The most completion tokens a round that sent `max_tokens` may report.
pub(crate) fn completion_bound(max_tokens: u64) -> u64 {
    max_tokens
        .saturating_add(max_tokens / 10)
        .saturating_add(UNSTREAMED_TOKENS)
}

/// The most prompt tokens a prompt of `bytes` in `messages` may report.
pub(crate) fn prompt_bound(bytes: u64, messages: u64) -> u64 {
    bytes
        .saturating_add(messages.saturating_mul(PER_MESSAGE_TOKENS))
        .saturating_add(PROMPT_PREAMBLE_TOKENS)
}

/// Bytes a prompt sends: every message's content, tool calls and ids.
pub(crate) fn prompt_bytes(prompt: &[Message]) -> u64 {
    prompt.iter().fold(0u64, |sum, m| {
        let calls = m.tool_calls.iter().fold(0u64, |s, c| {
            s.saturating_add((c.id.len() + c.name.len() + c.arguments.len()) as u64)
        });
        let id = m.tool_call_id.as_ref().map_or(0, String::len) as u64;
        let content = m.content.iter().fold(0u64, |n, p| {
            n.saturating_add(match p {
                Part::Text(t) | Part::Thinking { text: t, .. } => t.len() as u64,
                Part::RedactedThinking(d) => d.len() as u64,
                Part::Image { .. } => crate::tokens::IMAGE_TOKENS_BOUND,
            })
        });
        sum.saturating_add(content)
            .saturating_add(calls)
            .saturating_add(id)
    })
}

/// Bytes the tool definitions add to every prompt of a pipeline.
pub(crate) fn tool_spec_bytes(specs: &[ToolSpec]) -> u64 {
    specs.iter().fold(0u64, |sum, t| {
        let schema = serde_json::to_string(&t.parameters).map_or(0, |s| s.len());
        sum.saturating_add((t.name.len() + t.description.len() + schema) as u64)
    })
}

/// Checks a round's reported usage. `own` is Sluice's own count of the
/// round (prompt, completion); it is only asked for when a figure is
/// negative.
pub(crate) fn check(f: &RoundFacts, own: impl FnOnce() -> (u64, u64)) -> Checked {
    let mut anomalies = Vec::new();
    let mut why = Vec::new();
    let mut own = Some(own);
    let mut own_counts = None;
    let mut own_count = |i: usize| -> u64 {
        let counts = *own_counts.get_or_insert_with(|| own.take().map_or((0, 0), |f| f()));
        if i == 0 { counts.0 } else { counts.1 }
    };
    let mut estimated = false;

    let prompt_limit = prompt_bound(f.prompt_bytes, f.prompt_messages);
    let prompt_tokens = if f.reported_prompt < 0 {
        anomalies.push(Anomaly::Negative);
        why.push(format!(
            "prompt_tokens {} is negative; Sluice's own count was used",
            f.reported_prompt
        ));
        estimated = true;
        own_count(0)
    } else if f.reported_prompt > i128::from(prompt_limit) {
        anomalies.push(Anomaly::AbovePromptSize);
        why.push(format!(
            "prompt_tokens {} is more than a prompt of {} bytes can hold (at most {prompt_limit}); billed {prompt_limit}",
            f.reported_prompt, f.prompt_bytes
        ));
        prompt_limit
    } else {
        f.reported_prompt as u64
    };

    let max_limit = completion_bound(f.max_tokens);
    // Bytes received bound what was streamed; only a provider that says
    // how many tokens it did not stream lets them bound the whole count.
    let bytes_limit = f.hidden_tokens.map(|hidden| {
        hidden
            .saturating_add(f.generated_bytes)
            .saturating_add(UNSTREAMED_TOKENS)
    });
    let completion_tokens = if f.reported_completion < 0 {
        anomalies.push(Anomaly::Negative);
        why.push(format!(
            "completion_tokens {} is negative; Sluice's own count was used",
            f.reported_completion
        ));
        estimated = true;
        own_count(1).min(max_limit)
    } else {
        let reported = f.reported_completion;
        let mut billed = u64::try_from(reported).unwrap_or(u64::MAX);
        if reported > i128::from(max_limit) {
            anomalies.push(Anomaly::AboveMaxTokens);
            why.push(format!(
                "completion_tokens {reported} is above the max_tokens of {} sent (at most {max_limit} with the margin)",
                f.max_tokens
            ));
            billed = max_limit;
        }
        if let Some(limit) = bytes_limit
            && reported > i128::from(limit)
        {
            anomalies.push(Anomaly::AboveBytesReceived);
            why.push(format!(
                "completion_tokens {reported} is more than {} bytes received and {} hidden tokens can hold",
                f.generated_bytes,
                f.hidden_tokens.unwrap_or(0)
            ));
            billed = billed.min(limit);
        }
        if billed as i128 != reported {
            why.push(format!("billed {billed}"));
        }
        billed
    };

    Checked {
        prompt_tokens,
        completion_tokens,
        estimated,
        anomalies,
        reason: (!why.is_empty()).then(|| why.join("; ")),
    }
}

#[cfg(test)]
#[path = "usage_check_tests.rs"]
mod tests;
