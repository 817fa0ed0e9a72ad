//! What a request has used: the text the current model call generated
//! (counted for the ceiling) and the tokens and cost of every call so far.

use tokio::time::Instant;

use super::events::UsageReport;
use crate::ledger::Price;
use crate::ledger::money::format_usd;
use crate::provider::{Message, Usage};
use crate::tokens;

/// What the model generated in the round in progress, and how many tokens
/// that is. A token is at least one byte, so while the text holds no more
/// bytes than the ceiling allows tokens, the ceiling cannot have been
/// reached and nothing needs counting: the tokenizer only runs for long
/// answers (and for usage estimates when a provider reports none).
#[derive(Default)]
pub(crate) struct Generated {
    pub(super) text: String,
    /// The exact token count of `text`, kept once counting started.
    pub(super) exact: Option<u64>,
}

impl Generated {
    pub(super) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub(super) fn count(&self) -> u64 {
        self.exact.unwrap_or_else(|| tokens::count(&self.text))
    }

    /// Adds `s` if the round stays within `max` tokens; otherwise adds
    /// nothing and returns how many tokens are still allowed.
    pub(crate) fn push(&mut self, s: &str, max: u64) -> Result<(), u64> {
        if self.exact.is_none() && (self.text.len() + s.len()) as u64 <= max {
            self.text.push_str(s);
            return Ok(());
        }
        let before = match self.exact {
            Some(n) => n,
            None => tokens::count(&self.text),
        };
        self.exact = Some(before);
        let n = tokens::count(s);
        if before + n > max {
            return Err(max.saturating_sub(before));
        }
        self.text.push_str(s);
        self.exact = Some(before + n);
        Ok(())
    }

    /// Adds `s` whatever the ceiling (tool-call arguments, a cut delta).
    pub(crate) fn push_unchecked(&mut self, s: &str) {
        self.text.push_str(s);
        if let Some(n) = self.exact.as_mut() {
            *n += tokens::count(s);
        }
    }
}

/// What a request has used so far: finished rounds (model calls that asked
/// for tools) plus the round in progress.
pub(crate) struct Tally {
    pub(super) started: Instant,
    pub(super) first_token_at: Option<Instant>,
    /// This round: what the model generated (counted for the ceiling), the
    /// provider's own usage if it sent one, and its prompt.
    pub(super) generated: Generated,
    pub(super) provider_usage: Option<Usage>,
    pub(super) prompt: Vec<Message>,
    /// Finished rounds, summed.
    pub(super) spent_prompt: u64,
    pub(super) spent_completion: u64,
    pub(super) spent_estimated: bool,
    pub(super) spent_cost: i64,
    pub(super) rounds: u32,
    pub(super) tool_calls: u32,
    pub(super) price: Option<Price>,
}

impl Tally {
    pub(super) fn new(started: Instant, prompt: Vec<Message>, price: Option<Price>) -> Self {
        Tally {
            started,
            first_token_at: None,
            generated: Generated::default(),
            provider_usage: None,
            prompt,
            spent_prompt: 0,
            spent_completion: 0,
            spent_estimated: false,
            spent_cost: 0,
            rounds: 0,
            tool_calls: 0,
            price,
        }
    }

    /// The round in progress: (prompt, completion, estimated).
    pub(super) fn round(&self) -> (u64, u64, bool) {
        match self.provider_usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens, false),
            None if self.first_token_at.is_none() && self.generated.is_empty() => {
                // Nothing was generated: the provider bills nothing for a
                // call that failed before its first token.
                (0, 0, true)
            }
            None => (
                tokens::count_prompt(&self.prompt),
                self.generated.count(),
                true,
            ),
        }
    }

    /// Ends the round in progress; the next one sends `prompt`.
    pub(super) fn close_round(&mut self, prompt: Vec<Message>) {
        let (p, c, estimated) = self.round();
        self.spent_prompt += p;
        self.spent_completion += c;
        self.spent_estimated |= estimated;
        self.spent_cost += self.price.map_or(0, |price| price.cost(p, c));
        self.rounds += 1;
        self.generated = Generated::default();
        self.provider_usage = None;
        self.prompt = prompt;
    }

    /// Tokens of every round so far, the current one included.
    pub(super) fn total_tokens(&self) -> u64 {
        let (p, c, _) = self.round();
        self.spent_prompt + self.spent_completion + p + c
    }

    pub(super) fn usage(&self) -> UsageReport {
        let (p, c, estimated) = self.round();
        let prompt_tokens = self.spent_prompt + p;
        let completion_tokens = self.spent_completion + c;
        let cost_micros = self.spent_cost + self.price.map_or(0, |price| price.cost(p, c));
        UsageReport {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            estimated: estimated || self.spent_estimated,
            cost_micros,
            cost_usd: format_usd(cost_micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Generated;
    use crate::tokens;

    #[test]
    fn the_ceiling_is_exact_whether_or_not_the_tokenizer_ran() {
        // Short text under a large ceiling: nothing counted yet, all kept.
        let mut g = Generated::default();
        for w in ["Hello", " there", ",", " friend"] {
            assert!(g.push(w, 100).is_ok());
        }
        assert!(
            g.exact.is_none(),
            "counted while the ceiling was out of reach"
        );
        assert_eq!(g.count(), tokens::count("Hello there, friend"));

        // Past the byte bound the count is exact, and the ceiling is hit at
        // exactly `max` tokens.
        let mut g = Generated::default();
        let mut kept = 0;
        loop {
            match g.push(" tok", 10) {
                Ok(()) => kept += 1,
                Err(allowed) => {
                    assert_eq!(allowed, 0);
                    break;
                }
            }
        }
        assert_eq!(kept, 10);
        assert_eq!(g.count(), 10);
        assert_eq!(tokens::count(&g.text), 10);
    }
}
