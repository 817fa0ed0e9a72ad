use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

/// tiktoken's own o200k tokenizer, the reference.
fn reference() -> &'static tiktoken_rs::CoreBPE {
    static CORE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
    CORE.get_or_init(|| tiktoken_rs::o200k_base().unwrap())
}

/// What tiktoken's tokens of `text` give: the count, and the text of the
/// first `max` tokens cut back to whole characters.
fn expected(text: &str, max: u64) -> (u64, String) {
    let tokens = reference().encode_ordinary(text);
    let keep = &tokens[..tokens.len().min(max as usize)];
    let bytes = reference().decode_bytes(keep).unwrap();
    let valid = match std::str::from_utf8(&bytes) {
        Ok(s) => s.len(),
        Err(e) => e.valid_up_to(),
    };
    (tokens.len() as u64, text[..valid].to_string())
}

fn check(text: &str) {
    let (n, _) = expected(text, 0);
    assert_eq!(count(text), n, "count of {text:?}");
    for max in [0, 1, 2, 3, n / 2, n.saturating_sub(1), n, n + 1] {
        assert_eq!(
            truncate(text, max),
            expected(text, max).1,
            "{max} tokens of {text:?}"
        );
    }
}

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

#[test]
fn the_compact_vocabulary_holds_every_token_and_nothing_else() {
    let bpe = bpe().unwrap();
    let n = bpe.vocab.starts.len() - 1;
    assert!(n > 199_000, "{n} tokens");
    for rank in (0..n as Rank).step_by(97) {
        let token = bpe.vocab.token(rank);
        assert_eq!(bpe.vocab.rank(token), Some(rank));
        assert_eq!(reference().decode_bytes(&[rank]).unwrap(), token);
    }
    assert_eq!(bpe.vocab.rank(b"no such token \x00\xff"), None);
}

#[test]
fn counts_equal_tiktokens_on_real_and_awkward_text() {
    for text in [
        "",
        " ",
        "Hello there, friend",
        "I'm unable to provide real-time weather updates. You can check a weather website!",
        "  leading and trailing spaces   \n\n\n  \t tabs\r\nCRLF",
        "He said: \"don't\" -- they'LL've we'RE 12345678 3.14159 1,000,000",
        "naïve café façade Ünïcödé ß ǅ ǈ",
        "日本語のテキストです。中文文本。한국어 텍스트",
        "emoji 😀👍🏽🇫🇷 and ZWJ 👨‍👩‍👧‍👦",
        "fn main() { println!(\"{}\", x?.y::<T>()); } // code\n\tlet a = [1, 2];",
        "https://example.com/path?q=1&r=%20#frag user@example.org",
        "SELECT id, status FROM orders WHERE id = :order_id;",
    ] {
        check(text);
    }
}

#[test]
fn long_pieces_merge_like_tiktoken_and_fast() {
    // Pieces that are not tokens and need many merges.
    for text in [
        "a".repeat(3000),
        "ab".repeat(1500),
        "xqzj".repeat(700),
        "🙂".repeat(400),
        "7".repeat(999),
        " !".repeat(800),
    ] {
        check(&text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn counts_and_cuts_equal_tiktokens(
        text in "[a-zA-Z0-9 \n\t\r'.,!?:;\"()/_-]{0,40}|[a-zé'ÉßøЖж日本語😀👍 \n0-9]{0,60}|\\PC{0,30}"
    ) {
        let (n, _) = expected(&text, 0);
        prop_assert_eq!(count(&text), n);
        let max = n / 2;
        prop_assert_eq!(truncate(&text, max), expected(&text, max).1);
    }
}

#[test]
fn counting_within_a_limit_stops_early_and_agrees_below_it() {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
    let n = count(&text);
    assert_eq!(count_within(&text, n), Some(n));
    assert_eq!(count_within(&text, u64::MAX), Some(n));
    assert_eq!(count_within(&text, n - 1), None);
    // A piece far too long for the limit is refused without merging it.
    let huge = "a".repeat(4 << 20);
    assert_eq!(count_within(&huge, 10), None);
}

#[test]
fn a_split_count_keeps_the_last_piece_apart_and_adds_up() {
    for text in [
        "Hello there, friend",
        "tok tok tok ",
        "x",
        "",
        "  spaced   out  ",
    ] {
        let s = count_split(text, u64::MAX).unwrap();
        assert_eq!(s.head + s.tail_tokens, count(text), "{text:?}");
        assert_eq!(
            count(&text[s.tail_start..]),
            s.tail_tokens,
            "{text:?}: the tail is the last piece"
        );
        assert_eq!(count(&text[..s.tail_start]), s.head, "{text:?}");
    }
    assert_eq!(count_split("tok tok tok", 2), None);
}

#[test]
fn the_guard_is_above_max_tokens_and_saturates() {
    assert_eq!(completion_guard(256), 448);
    assert_eq!(completion_guard(0), 64);
    assert_eq!(completion_guard(u64::MAX), u64::MAX);
    assert_eq!(prompt_bound(u64::MAX), u64::MAX);
}
