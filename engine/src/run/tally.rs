//! What a request has used: the text the current model call generated
//! (counted for the ceiling) and the tokens and cost of every call so far.

use tokio::time::Instant;

use super::events::UsageReport;
use super::usage_check::{self, Anomaly, Checked, RoundFacts};
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
    /// The `max_tokens` sent for this round (unbounded until set).
    pub(super) max_tokens: u64,
    /// Bytes the pipeline's tool definitions add to every prompt.
    pub(super) tool_spec_bytes: u64,
    /// Finished rounds whose provider usage was not believed: what was
    /// wrong and why (see [`usage_check`]), by round number.
    pub(super) spent_anomalies: Vec<(u32, Vec<Anomaly>, String)>,
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
            max_tokens: u64::MAX,
            tool_spec_bytes: 0,
            spent_anomalies: Vec::new(),
        }
    }

    /// The provider's usage of the round in progress, checked against what
    /// the round sent and received.
    fn check_round(&self, u: Usage) -> Checked {
        let facts = RoundFacts {
            reported_prompt: i128::from(u.prompt_tokens),
            reported_completion: i128::from(u.completion_tokens),
            max_tokens: self.max_tokens,
            prompt_bytes: usage_check::prompt_bytes(&self.prompt)
                .saturating_add(self.tool_spec_bytes),
            prompt_messages: self.prompt.len() as u64,
            generated_bytes: self.generated.text.len() as u64,
            // The wire decoders do not report reasoning tokens yet.
            hidden_tokens: None,
        };
        usage_check::check(&facts, || {
            (tokens::count_prompt(&self.prompt), self.generated.count())
        })
    }

    /// The round in progress: (prompt, completion, estimated).
    pub(super) fn round(&self) -> (u64, u64, bool) {
        match self.provider_usage {
            Some(u) => {
                let c = self.check_round(u);
                (c.prompt_tokens, c.completion_tokens, c.estimated)
            }
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
        if let Some(u) = self.provider_usage {
            let checked = self.check_round(u);
            if let Some(reason) = checked.reason {
                self.spent_anomalies
                    .push((self.rounds + 1, checked.anomalies, reason));
            }
        }
        self.spent_prompt = self.spent_prompt.saturating_add(p);
        self.spent_completion = self.spent_completion.saturating_add(c);
        self.spent_estimated |= estimated;
        self.spent_cost = self
            .spent_cost
            .saturating_add(self.price.map_or(0, |price| price.cost(p, c)));
        self.rounds += 1;
        self.generated = Generated::default();
        self.provider_usage = None;
        self.prompt = prompt;
    }

    /// Tokens of every round so far, the current one included.
    pub(super) fn total_tokens(&self) -> u64 {
        let (p, c, _) = self.round();
        self.spent_prompt
            .saturating_add(self.spent_completion)
            .saturating_add(p)
            .saturating_add(c)
    }

    /// What was wrong with the provider's usage, in every round so far: the
    /// kinds, and the reasons (rounds numbered when there were several).
    pub(super) fn usage_anomalies(&self) -> (Vec<Anomaly>, Option<String>) {
        let mut all = self.spent_anomalies.clone();
        if let Some(u) = self.provider_usage {
            let checked = self.check_round(u);
            if let Some(why) = checked.reason {
                all.push((self.rounds + 1, checked.anomalies, why));
            }
        }
        let kinds = all.iter().flat_map(|(_, k, _)| k.iter().copied()).collect();
        let text = match all.len() {
            0 => None,
            1 if self.rounds == 0 => all.pop().map(|(_, _, why)| why),
            _ => Some(
                all.iter()
                    .map(|(round, _, why)| format!("round {round}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        (kinds, text)
    }

    pub(super) fn usage(&self) -> UsageReport {
        let (p, c, estimated) = self.round();
        let prompt_tokens = self.spent_prompt.saturating_add(p);
        let completion_tokens = self.spent_completion.saturating_add(c);
        let cost_micros = self
            .spent_cost
            .saturating_add(self.price.map_or(0, |price| price.cost(p, c)));
        UsageReport {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
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
