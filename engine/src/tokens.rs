//! Token counting with a real tokenizer (o200k_base, the encoding of the
//! gpt-4o family), used where the provider reports no usage and to enforce
//! the completion ceiling while the stream runs. Counts from here are
//! estimates for models with other tokenizers, and are reported as such.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::provider::Message;

static BPE: OnceLock<Option<CoreBPE>> = OnceLock::new();

/// Loads the tokenizer; call at start-up so the first request does not pay
/// for it. Later calls are free.
pub fn init() {
    bpe();
}

fn bpe() -> Option<&'static CoreBPE> {
    BPE.get_or_init(|| match tiktoken_rs::o200k_base() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the o200k tokenizer; falling back to a byte estimate");
            None
        }
    })
    .as_ref()
}

/// Tokens in `text`.
pub fn count(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.encode_ordinary(text).len() as u64,
        // About four bytes per token in English text.
        None => text.len().div_ceil(4) as u64,
    }
}

/// The longest prefix of `text` that holds at most `max` tokens.
pub fn truncate(text: &str, max: u64) -> String {
    let Some(b) = bpe() else {
        let mut end = (max as usize * 4).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        return text[..end].to_string();
    };
    let tokens = b.encode_ordinary(text);
    if tokens.len() as u64 <= max {
        return text.to_string();
    }
    let keep = &tokens[..max as usize];
    match b.decode_bytes(keep) {
        Ok(bytes) => {
            // A cut may fall inside a multi-byte character: keep whole ones.
            match std::str::from_utf8(&bytes) {
                Ok(s) => s.to_string(),
                Err(e) => String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned(),
            }
        }
        Err(_) => String::new(),
    }
}

/// Prompt tokens of a chat, as OpenAI counts them for chat models: the
/// content plus a few tokens of framing per message and for the reply.
pub fn count_prompt(messages: &[Message]) -> u64 {
    messages.iter().map(|m| count(&m.content) + 4).sum::<u64>() + 3
}

/// An upper bound of what a provider will count for a prompt we counted as
/// `counted`: our tokenizer may differ from the model's, so 10% and a few
/// tokens more. Reservations and the request token budget rely on it.
pub fn prompt_bound(counted: u64) -> u64 {
    counted + counted / 10 + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_truncates_on_token_boundaries() {
        let text = "The quick brown fox jumps over the lazy dog.";
        let n = count(text);
        assert!((9..=11).contains(&n), "{n}");
        let cut = truncate(text, 3);
        assert!(text.starts_with(&cut));
        assert_eq!(count(&cut), 3);
        assert_eq!(truncate(text, 100), text);
    }

    #[test]
    fn truncation_never_splits_a_character() {
        let text = "日本語のテキストです";
        for max in 0..count(text) {
            let cut = truncate(text, max);
            assert!(text.starts_with(&cut));
        }
    }
}
