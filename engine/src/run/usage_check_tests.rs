//! Tests of the usage check, at the extremes.

use super::*;

fn facts(prompt: i128, completion: i128) -> RoundFacts {
    RoundFacts {
        reported_prompt: prompt,
        reported_completion: completion,
        max_tokens: 256,
        prompt_bytes: 1_000,
        prompt_messages: 2,
        generated_bytes: 800,
        hidden_tokens: None,
    }
}

fn never() -> (u64, u64) {
    panic!("Sluice's own count is only needed for a negative figure")
}

#[test]
fn honest_usage_is_believed_as_reported() {
    for (p, c) in [
        (0, 0),
        (14, 30),
        (1_000, 256),
        (1_000 + 64 + 4_096, 256 + 25 + 16),
    ] {
        let got = check(&facts(p, c), never);
        assert_eq!(
            (got.prompt_tokens, got.completion_tokens),
            (p as u64, c as u64)
        );
        assert!(got.anomalies.is_empty() && got.reason.is_none(), "{got:?}");
        assert!(!got.estimated);
    }
}

#[test]
fn u64_max_is_billed_at_the_bounds_and_its_figures_are_kept() {
    let max = i128::from(u64::MAX);
    let got = check(&facts(max, max), never);
    assert_eq!(got.prompt_tokens, prompt_bound(1_000, 2));
    assert_eq!(got.completion_tokens, completion_bound(256));
    assert_eq!(
        got.anomalies,
        vec![Anomaly::AbovePromptSize, Anomaly::AboveMaxTokens]
    );
    let reason = got.reason.unwrap();
    assert!(reason.contains("18446744073709551615"), "{reason}");
    assert!(reason.contains("max_tokens of 256"), "{reason}");
}

#[test]
fn ten_million_completion_tokens_for_a_short_answer_are_flagged() {
    let got = check(&facts(20, 10_000_000), never);
    assert_eq!(got.prompt_tokens, 20);
    assert_eq!(got.completion_tokens, 256 + 25 + 16);
    assert_eq!(got.anomalies, vec![Anomaly::AboveMaxTokens]);
    assert!(got.reason.unwrap().contains("10000000"));
}

#[test]
fn negative_figures_are_replaced_by_sluices_own_count() {
    let got = check(&facts(-1, i128::from(i64::MIN)), || (12, 7));
    assert_eq!((got.prompt_tokens, got.completion_tokens), (12, 7));
    assert!(got.estimated);
    assert_eq!(got.anomalies, vec![Anomaly::Negative, Anomaly::Negative]);
    assert!(got.reason.unwrap().contains("-9223372036854775808"));
    // Sluice's own count is still bounded by max_tokens.
    let got = check(&facts(5, -3), || (5, u64::MAX));
    assert_eq!(got.completion_tokens, completion_bound(256));
}

#[test]
fn bytes_received_bound_only_what_the_provider_says_it_streamed() {
    // A reasoning model: 200 hidden tokens and 10 bytes of answer is honest.
    let mut f = facts(20, 210);
    f.generated_bytes = 10;
    f.hidden_tokens = Some(200);
    assert!(check(&f, never).anomalies.is_empty());
    // Unknown hidden tokens: bytes received bound nothing.
    f.hidden_tokens = None;
    assert!(check(&f, never).anomalies.is_empty());
    // No hidden tokens: 250 tokens cannot come out of 10 bytes.
    f.reported_completion = 250;
    f.hidden_tokens = Some(0);
    let got = check(&f, never);
    assert_eq!(got.anomalies, vec![Anomaly::AboveBytesReceived]);
    assert_eq!(got.completion_tokens, 10 + 16);
}

#[test]
fn bounds_saturate_at_the_extremes() {
    assert_eq!(completion_bound(u64::MAX), u64::MAX);
    assert_eq!(prompt_bound(u64::MAX, u64::MAX), u64::MAX);
    assert_eq!(completion_bound(0), 16);
    let mut f = facts(i128::from(u64::MAX), i128::from(u64::MAX));
    f.max_tokens = u64::MAX;
    f.prompt_bytes = u64::MAX;
    let got = check(&f, never);
    assert_eq!(
        (got.prompt_tokens, got.completion_tokens),
        (u64::MAX, u64::MAX)
    );
    assert!(got.anomalies.is_empty());
}

/// The wiring in `Tally`: every round is checked, the anomalies of earlier
/// rounds are kept, and no sum overflows.
#[test]
fn a_tally_bills_each_round_within_its_bounds_and_keeps_the_reasons() {
    use crate::ledger::Price;
    use crate::provider::{Message, Role, Usage};
    let prompt = vec![Message::new(Role::User, "hi")];
    let price = Price {
        input_per_m: i64::MAX,
        output_per_m: i64::MAX,
        cached_input_per_m: i64::MAX,
        cache_write_per_m: i64::MAX,
        cache_write_1h_per_m: i64::MAX,
    };
    let mut tally = super::super::Tally::new(
        tokio::time::Instant::now(),
        prompt.clone(),
        crate::tokens::count_prompt(&prompt),
        Some(price),
    );
    tally.max_tokens = 100;
    tally.provider_usage = Some(Usage {
        prompt_tokens: u64::MAX.into(),
        completion_tokens: u64::MAX.into(),
        ..Usage::default()
    });
    let (p, c, _) = tally.round();
    assert_eq!((p, c), (prompt_bound(2, 1), completion_bound(100)));
    tally.close_round(prompt, 3);
    tally.max_tokens = 50;
    tally.provider_usage = Some(Usage {
        prompt_tokens: 5,
        completion_tokens: 60,
        ..Usage::default()
    });
    let usage = tally.usage();
    assert_eq!(usage.completion_tokens, completion_bound(100) + 60);
    let first = price.cost(prompt_bound(2, 1), completion_bound(100));
    assert_eq!(usage.cost_micros, first.saturating_add(price.cost(5, 60)));
    assert!(tally.total_tokens() < 10_000);
    let (kinds, why) = tally.usage_anomalies();
    assert_eq!(kinds, [Anomaly::AbovePromptSize, Anomaly::AboveMaxTokens]);
    let why = why.unwrap();
    assert!(why.starts_with("round 1: "), "{why}");
    assert!(!why.contains("round 2"), "{why}");
    // The second round's 60 of 50 is within the margin (71); 80 is not.
    tally.provider_usage = Some(Usage {
        prompt_tokens: 5,
        completion_tokens: 80,
        ..Usage::default()
    });
    let (kinds, why) = tally.usage_anomalies();
    assert_eq!(kinds.len(), 3);
    assert!(why.unwrap().contains("round 2: completion_tokens 80"));
}
