//! Rate limits as token buckets kept in the ledger, so that every instance
//! sharing it draws from the same bucket.
//!
//! A bucket of `L` per minute holds at most `L`; what a request takes
//! drains out again at `L` per minute. Its state is one integer, `fill`,
//! in units of one per minute-millisecond (an amount `n` is `n × 60,000`),
//! and the time it was last updated: draining `e` milliseconds removes
//! `e × L`, exactly, with no rounding. A request that takes `n` is
//! admitted when `fill + n × 60,000 <= L × 60,000`, so a full minute's
//! worth (`L` requests at once) is admitted and the next one waits
//! `60,000 / L` ms.

/// One minute, in milliseconds: the unit of every limit.
pub const WINDOW_MS: i64 = 60_000;

/// What a request takes from one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateCharge {
    /// `key:NAME/requests`, `pipeline:NAME/tokens`, ...
    pub bucket: String,
    /// The limit, per minute (at least 1).
    pub per_minute: i64,
    /// What this request takes: 1 request, or its worst-case tokens.
    pub amount: i64,
}

impl RateCharge {
    /// Whether this bucket counts tokens (settled to what was used).
    pub fn is_tokens(&self) -> bool {
        self.bucket.ends_with(TOKENS)
    }
}

/// The suffix of a bucket of requests, and of tokens.
pub const REQUESTS: &str = "/requests";
pub const TOKENS: &str = "/tokens";

/// A bucket's state: `fill` (minute-milliseconds) at `updated_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    pub fill: i64,
    pub updated_ms: i64,
}

/// How a bucket stands after a request was admitted or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: i64,
    /// What is left now, whole units.
    pub remaining: i64,
    /// Until the bucket is full again.
    pub reset_ms: i64,
    /// Until this request would fit (0 when it was admitted; `None`: it
    /// never fits, it asks for more than the limit).
    pub retry_after_ms: Option<i64>,
}

/// `state` drained to `now`. A clock behind the last update drains
/// nothing (instances' clocks differ a little; none may drain twice).
fn drained(state: BucketState, per_minute: i64, now: i64) -> i64 {
    let elapsed = (now - state.updated_ms).clamp(0, WINDOW_MS);
    state
        .fill
        .saturating_sub(elapsed.saturating_mul(per_minute))
        .max(0)
}

/// Takes `charge` from a bucket at `state` at time `now`: the new state if
/// it fits, and how the bucket stands either way.
pub fn take(state: BucketState, charge: &RateCharge, now: i64) -> (Option<BucketState>, Standing) {
    let limit = charge.per_minute.max(1);
    let capacity = limit.saturating_mul(WINDOW_MS);
    let fill = drained(state, limit, now);
    let need = charge.amount.max(0).saturating_mul(WINDOW_MS);
    let updated_ms = state.updated_ms.max(now);
    if need <= capacity - fill {
        let fill = fill + need;
        let standing = standing(fill, limit, Some(0));
        return (Some(BucketState { fill, updated_ms }), standing);
    }
    let retry = (need <= capacity).then(|| {
        // Drains `limit` per ms: until `fill + need <= capacity`.
        let over = fill + need - capacity;
        (over + limit - 1) / limit
    });
    (None, standing(fill, limit, retry))
}

fn standing(fill: i64, limit: i64, retry_after_ms: Option<i64>) -> Standing {
    let capacity = limit.saturating_mul(WINDOW_MS);
    Standing {
        limit,
        remaining: ((capacity - fill) / WINDOW_MS).max(0),
        reset_ms: (fill + limit - 1) / limit,
        retry_after_ms,
    }
}

/// A bucket of tokens after a request that reserved `reserved` used
/// `used`: what it did not use flows back (never below empty).
pub fn refund(state: BucketState, reserved: i64, used: i64) -> BucketState {
    let back = reserved
        .saturating_sub(used)
        .max(0)
        .saturating_mul(WINDOW_MS);
    BucketState {
        fill: state.fill.saturating_sub(back).max(0),
        updated_ms: state.updated_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn charge(per_minute: i64, amount: i64) -> RateCharge {
        RateCharge {
            bucket: "key:k/requests".into(),
            per_minute,
            amount,
        }
    }

    /// Takes one request at a time at `now` until one is refused.
    fn admitted_at_once(per_minute: i64, now: i64) -> (i64, Standing) {
        let mut state = BucketState {
            fill: 0,
            updated_ms: 0,
        };
        let mut n = 0;
        loop {
            match take(state, &charge(per_minute, 1), now) {
                (Some(s), _) => {
                    state = s;
                    n += 1;
                }
                (None, standing) => return (n, standing),
            }
        }
    }

    #[test]
    fn a_full_bucket_admits_exactly_its_limit_at_once() {
        for limit in [1, 7, 60, 100, 7_919, 1_000_000] {
            let (n, standing) = admitted_at_once(limit, 5_000);
            assert_eq!(n, limit);
            assert_eq!(standing.remaining, 0);
            // The next one fits once one unit has drained.
            assert_eq!(
                standing.retry_after_ms,
                Some((WINDOW_MS + limit - 1) / limit)
            );
            assert_eq!(standing.reset_ms, WINDOW_MS);
        }
    }

    #[test]
    fn a_bucket_drains_at_its_rate_and_no_faster() {
        let mut s = BucketState {
            fill: 0,
            updated_ms: 0,
        };
        for _ in 0..60 {
            s = take(s, &charge(60, 1), 0).0.unwrap();
        }
        // One per second drains back: 999 ms is not enough, 1000 is.
        assert!(take(s, &charge(60, 1), 999).0.is_none());
        let (after, standing) = take(s, &charge(60, 1), 1_000);
        assert!(after.is_some());
        assert_eq!(standing.remaining, 0);
        // A clock behind the last update drains nothing.
        let late = take(s, &charge(60, 1), -5_000);
        assert!(late.0.is_none());
        assert_eq!(late.1.retry_after_ms, Some(1_000));
    }

    #[test]
    fn more_than_the_limit_never_fits_and_refunds_flow_back() {
        let empty = BucketState {
            fill: 0,
            updated_ms: 0,
        };
        let (none, standing) = take(empty, &charge(1_000, 1_001), 0);
        assert!(none.is_none());
        assert_eq!(standing.retry_after_ms, None);
        let (s, standing) = take(empty, &charge(1_000, 800), 0);
        let s = s.unwrap();
        assert_eq!(standing.remaining, 200);
        assert!(take(s, &charge(1_000, 300), 0).0.is_none());
        // 800 reserved, 100 used: 700 back.
        let s = refund(s, 800, 100);
        assert_eq!(take(s, &charge(1_000, 300), 0).1.remaining, 600);
        assert_eq!(refund(s, 10_000, 0).fill, 0);
    }

    proptest! {
        /// Whatever the arrivals, no window of one minute admits more than
        /// the limit plus what drained in it: over a span of `t` ms from
        /// an empty bucket, at most `limit + t × limit / 60,000`.
        #[test]
        fn no_span_admits_more_than_the_bucket_allows(
            limit in 1i64..500,
            gaps in proptest::collection::vec(0i64..3_000, 1..400),
        ) {
            let mut s = BucketState { fill: 0, updated_ms: 0 };
            let (mut now, mut admitted) = (0i64, 0i64);
            for gap in gaps {
                now += gap;
                if let (Some(next), _) = take(s, &charge(limit, 1), now) {
                    s = next;
                    admitted += 1;
                }
                prop_assert!(admitted <= limit + now * limit / WINDOW_MS);
            }
        }
    }
}
