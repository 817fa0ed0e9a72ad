//! What a request has used: the text the current model call generated
//! (counted for the ceiling) and the tokens and cost of every call so far.

use tokio::time::Instant;

use super::events::{CountedBy, UsageReport};
use super::usage_check::{self, Anomaly, Checked, RoundFacts};
use crate::ledger::money::format_usd;
use crate::ledger::{CacheUse, Price};
use crate::provider::{Message, Usage};
use crate::tokens;

/// Once counting started, at most this many bytes of the last piece wait
/// for the text that may extend it; a longer piece is counted as it is
/// (a boundary it did not have costs at most a token).
const TAIL_MAX: usize = 256;

/// Most text held uncounted while the limit is out of reach: past it,
/// counting starts anyway, so that a round under a very large limit does
/// not hold its whole answer.
const UNCOUNTED_MAX: usize = 16 << 10;

/// Everything the model generated in the round in progress (text, tool-call
/// names and arguments, reasoning, refusals), counted for the ceiling.
///
/// A token is at least one byte, so while the round holds no more bytes
/// than the limit allows tokens, the limit cannot have been reached and
/// nothing needs counting: short answers never meet the tokenizer. Past
/// that, every push is counted at once and only the last piece of text
/// (which the next push may extend) is kept, so what a round holds stays
/// bounded whatever the provider sends.
#[derive(Default)]
pub(crate) struct Generated {
    /// Bytes generated this round, tool-call framing included.
    bytes: u64,
    /// Text not counted yet: all of it before counting starts, then only
    /// the last piece.
    pending: String,
    /// Tokens of `pending`, once counting started.
    pending_tokens: u64,
    /// Tokens of everything before `pending`, tool-call framing included.
    counted: u64,
    counting: bool,
}

impl Generated {
    pub(super) fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes generated so far, tool-call framing included.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sluice's own count of what was generated (o200k).
    pub(super) fn count(&self) -> u64 {
        if self.counting {
            self.counted.saturating_add(self.pending_tokens)
        } else {
            self.counted
                .saturating_add(tokens::count_within(&self.pending, u64::MAX).unwrap_or(u64::MAX))
        }
    }

    /// Adds generated content if the round stays within `limit` tokens;
    /// otherwise adds nothing and returns how many tokens were still
    /// allowed.
    pub(crate) fn push(&mut self, s: &str, limit: u64) -> Result<(), u64> {
        let bytes = self.bytes.saturating_add(s.len() as u64);
        if !self.counting && bytes <= limit && self.pending.len() + s.len() <= UNCOUNTED_MAX {
            self.pending.push_str(s);
            self.bytes = bytes;
            return Ok(());
        }
        let before_pending = if self.counting {
            self.pending_tokens
        } else {
            // First count: the text so far holds at most `limit` bytes.
            tokens::count_within(&self.pending, u64::MAX).unwrap_or(u64::MAX)
        };
        let before = self.counted.saturating_add(before_pending);
        let mut joined = std::mem::take(&mut self.pending);
        joined.push_str(s);
        let Some(split) = tokens::count_split(&joined, limit.saturating_sub(self.counted)) else {
            joined.truncate(joined.len() - s.len());
            self.pending = joined;
            self.pending_tokens = before_pending;
            self.counting = true;
            return Err(limit.saturating_sub(before));
        };
        self.counting = true;
        self.bytes = bytes;
        if joined.len() - split.tail_start > TAIL_MAX {
            self.counted += split.head + split.tail_tokens;
            self.pending_tokens = 0;
            joined.clear();
        } else {
            self.counted += split.head;
            self.pending_tokens = split.tail_tokens;
            joined.drain(..split.tail_start);
        }
        self.pending = joined;
        Ok(())
    }

    /// Adds `s` whatever the limit (the part of a delta sent before a cut).
    pub(crate) fn push_unchecked(&mut self, s: &str) {
        if self.push(s, u64::MAX).is_err() {
            // Only a count past u64::MAX fails: saturate.
            self.counted = u64::MAX;
        }
    }

    /// Tokens the provider spends on framing rather than text (a tool
    /// call's structure): counted, and as many bytes, so that the byte
    /// bound that spares the tokenizer stays a bound.
    pub(crate) fn push_framing(&mut self, tokens: u64) {
        self.counted = self.counted.saturating_add(tokens);
        self.bytes = self.bytes.saturating_add(tokens);
    }
}

/// What a request has used so far: finished rounds (model calls that asked
/// for tools) plus the round in progress.
pub(crate) struct Tally {
    pub(super) started: Instant,
    pub(super) first_token_at: Option<Instant>,
    /// This round: what the model generated (counted for the ceiling), the
    /// provider's own usage if it sent one, and its prompt with Sluice's
    /// count of it (counted once, off the async workers when long).
    pub(super) generated: Generated,
    pub(super) provider_usage: Option<Usage>,
    pub(super) prompt: Vec<Message>,
    pub(super) prompt_counted: u64,
    /// Finished rounds, summed.
    pub(super) spent_prompt: u64,
    pub(super) spent_completion: u64,
    /// Finished rounds' prompt-cache reads and writes, as reported.
    pub(super) spent_cache: CacheUse,
    /// The request holds a one-hour cache breakpoint: writes the provider
    /// does not split by lifetime are billed as hour-long.
    pub(super) one_hour: bool,
    /// Finished rounds whose usage Sluice counted, and those the provider
    /// reported.
    pub(super) rounds_estimated: u32,
    pub(super) rounds_reported: u32,
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
    /// The request's spans (empty when traces are off).
    pub(super) trace: crate::telemetry::Trace,
}

impl Tally {
    pub(super) fn new(
        started: Instant,
        prompt: Vec<Message>,
        prompt_counted: u64,
        price: Option<Price>,
    ) -> Self {
        Tally {
            started,
            first_token_at: None,
            generated: Generated::default(),
            provider_usage: None,
            prompt,
            prompt_counted,
            spent_prompt: 0,
            spent_completion: 0,
            spent_cache: CacheUse::default(),
            one_hour: false,
            rounds_estimated: 0,
            rounds_reported: 0,
            spent_cost: 0,
            rounds: 0,
            tool_calls: 0,
            price,
            max_tokens: u64::MAX,
            tool_spec_bytes: 0,
            spent_anomalies: Vec::new(),
            trace: crate::telemetry::Trace::OFF,
        }
    }

    /// The provider's usage of the round in progress, checked against what
    /// the round sent and received.
    fn check_round(&self, u: Usage) -> Checked {
        let facts = RoundFacts {
            reported_prompt: u.prompt_tokens,
            reported_completion: u.completion_tokens,
            max_tokens: self.max_tokens,
            prompt_bytes: usage_check::prompt_bytes(&self.prompt)
                .saturating_add(self.tool_spec_bytes),
            prompt_messages: self.prompt.len() as u64,
            generated_bytes: self.generated.bytes(),
            // The wire decoders do not report reasoning tokens yet.
            hidden_tokens: None,
        };
        usage_check::check(&facts, || (self.prompt_counted, self.generated.count()))
    }

    /// The round in progress: (prompt, completion, estimated), or None when
    /// it cost nothing: the provider bills nothing for a call that failed
    /// before its first token.
    fn round_usage(&self) -> Option<(u64, u64, bool)> {
        match self.provider_usage {
            Some(u) => {
                let c = self.check_round(u);
                Some((c.prompt_tokens, c.completion_tokens, c.estimated))
            }
            None if self.first_token_at.is_none() && self.generated.is_empty() => None,
            None => Some((self.prompt_counted, self.generated.count(), true)),
        }
    }

    /// The round in progress: (prompt, completion, estimated).
    pub(super) fn round(&self) -> (u64, u64, bool) {
        self.round_usage().unwrap_or((0, 0, true))
    }

    /// Ends the round in progress; the next one sends `prompt`, which
    /// Sluice counted as `prompt_counted` tokens.
    pub(super) fn close_round(&mut self, prompt: Vec<Message>, prompt_counted: u64) {
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
        let cache = self.round_cache();
        let round_cost = self.price.map_or(0, |price| price.cost_cached(p, c, cache));
        self.spent_cache = CacheUse {
            read: self.spent_cache.read.saturating_add(cache.read),
            write: self.spent_cache.write.saturating_add(cache.write),
            write_1h: self.spent_cache.write_1h.saturating_add(cache.write_1h),
        };
        if estimated {
            self.rounds_estimated += 1;
        } else {
            self.rounds_reported += 1;
        }
        self.spent_cost = self.spent_cost.saturating_add(round_cost);
        self.rounds += 1;
        self.generated = Generated::default();
        self.provider_usage = None;
        self.prompt = prompt;
        self.prompt_counted = prompt_counted;
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

    /// The round in progress's prompt-cache reads and writes, as the
    /// provider reported them (a negative or absurd figure counts as 0).
    /// Writes it did not split by lifetime, in a request that asked for
    /// the one-hour cache, count as hour-long: never billed below cost.
    fn round_cache(&self) -> CacheUse {
        let clamp = |n: i128| u64::try_from(n).unwrap_or(0);
        self.provider_usage.map_or(CacheUse::default(), |u| {
            let write = clamp(u.cache_write_tokens);
            let write_1h = match u.cache_write_1h_tokens {
                Some(n) => clamp(n),
                None if self.one_hour => write,
                None => 0,
            };
            CacheUse {
                read: clamp(u.cache_read_tokens),
                write,
                write_1h: write_1h.min(write),
            }
        })
    }

    pub(super) fn usage(&self) -> UsageReport {
        let current = self.round_usage();
        let (p, c, estimated) = current.unwrap_or((0, 0, true));
        let prompt_tokens = self.spent_prompt.saturating_add(p);
        let completion_tokens = self.spent_completion.saturating_add(c);
        let cache = self.round_cache();
        // Part of the prompt: never more than it, whatever was reported.
        let cache_read_tokens = self
            .spent_cache
            .read
            .saturating_add(cache.read)
            .min(prompt_tokens);
        let cache_write_tokens = self
            .spent_cache
            .write
            .saturating_add(cache.write)
            .min(prompt_tokens - cache_read_tokens);
        let cache_write_1h_tokens = self
            .spent_cache
            .write_1h
            .saturating_add(cache.write_1h)
            .min(cache_write_tokens);
        let cost_micros = self
            .spent_cost
            .saturating_add(self.price.map_or(0, |price| price.cost_cached(p, c, cache)));
        let (by_sluice, by_provider) = match current {
            Some((_, _, true)) => (self.rounds_estimated + 1, self.rounds_reported),
            Some((_, _, false)) => (self.rounds_estimated, self.rounds_reported + 1),
            None => (self.rounds_estimated, self.rounds_reported),
        };
        let counted_by = match (by_sluice, by_provider) {
            (0, p) if p > 0 => CountedBy::Provider,
            (_, 0) => CountedBy::Sluice,
            _ => CountedBy::Both,
        };
        UsageReport {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens.saturating_add(completion_tokens),
            estimated: estimated || self.rounds_estimated > 0,
            counted_by,
            cost_micros,
            cost_usd: format_usd(cost_micros),
            cache_read_tokens,
            cache_write_tokens,
            cache_write_1h_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Generated;
    use crate::tokens;

    #[test]
    fn the_limit_is_exact_whether_or_not_the_tokenizer_ran() {
        // Short text under a large limit: nothing counted yet, all kept.
        let mut g = Generated::default();
        for w in ["Hello", " there", ",", " friend"] {
            assert!(g.push(w, 100).is_ok());
        }
        assert!(!g.counting, "counted while the limit was out of reach");
        assert_eq!(g.count(), tokens::count("Hello there, friend"));

        // Past the byte bound the count is exact, and the limit is hit at
        // exactly `limit` tokens.
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
    }

    #[test]
    fn counting_in_pieces_equals_counting_the_whole() {
        // Chunk boundaries inside words, whitespace and multi-byte text
        // must not inflate the count (they did when every push was counted
        // on its own: "tok " counted as two tokens, 64 of them as 128).
        let text = "tok ".repeat(64)
            + "Grüße aus Köln, 東京 and   spaced    words\n\n\tcode(); "
            + &"naïve café ".repeat(20);
        for size in [1, 2, 3, 4, 5, 7, 16, 64] {
            let mut g = Generated::default();
            let bytes = text.as_bytes();
            let mut at = 0;
            while at < bytes.len() {
                let mut end = (at + size).min(bytes.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                g.push(&text[at..end], 1_000_000).expect("within the limit");
                // A low byte bound: force counting early.
                if at == 0 {
                    g.push_framing(0);
                }
                at = end;
            }
            let whole = tokens::count(&text);
            let pieces = g.count();
            assert!(
                pieces.abs_diff(whole) <= 1,
                "pushes of {size} bytes: {pieces} tokens, {whole} as a whole"
            );
        }
        // The same with counting from the start.
        let mut g = Generated::default();
        for piece in text.split_inclusive(' ') {
            g.push(piece, 50_000).unwrap();
        }
        assert!(g.count().abs_diff(tokens::count(&text)) <= 1);
    }

    #[test]
    fn what_a_round_holds_stays_small_whatever_it_is_sent() {
        // 1 MB of whitespace in 16 KB pushes, under a limit it cannot
        // reach: no more than the uncounted bound is kept.
        let mut g = Generated::default();
        let chunk = " ".repeat(16 << 10);
        for _ in 0..64 {
            g.push(&chunk, u64::MAX / 2).unwrap();
            assert!(g.pending.len() <= super::UNCOUNTED_MAX);
        }
        assert!(g.counting);
        // And under a real limit the flood is refused early.
        let mut g = Generated::default();
        let mut pushed = 0;
        while g.push(&chunk, 448).is_ok() {
            pushed += 1;
        }
        assert!(pushed < 64, "{pushed} pushes of 16 KB accepted");
        assert!(g.count() <= 448);
    }
}
