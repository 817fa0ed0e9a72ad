//! Money and days: integer micro-dollars, prices per million tokens, and
//! UTC calendar days. No floats once configuration is compiled.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Integer micro-dollars (1 USD = 1,000,000).
pub type Micros = i64;

/// Converts a configured dollar amount (e.g. `5.00`, `0.15`) to micro-dollars
/// of that unit, rounding to the nearest. None for negative or absurd values.
pub fn usd_to_micros(usd: f64) -> Option<Micros> {
    if !usd.is_finite() || !(0.0..=1e12).contains(&usd) {
        return None;
    }
    Some((usd * 1_000_000.0).round() as Micros)
}

/// Formats micro-dollars as dollars with six decimals, e.g. `0.001250`.
pub fn format_usd(m: Micros) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let m = m.unsigned_abs();
    format!("{sign}{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// A model's price, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input_per_m: Micros,
    pub output_per_m: Micros,
    /// Input tokens read from the provider's prompt cache.
    pub cached_input_per_m: Micros,
    /// Input tokens written to the prompt cache for 5 minutes (Anthropic
    /// bills them at 1.25 × input).
    pub cache_write_per_m: Micros,
    /// Input tokens written to the prompt cache for an hour (a breakpoint
    /// with `ttl: "1h"`; Anthropic bills them at 2 × input).
    pub cache_write_1h_per_m: Micros,
}

/// Of a call's prompt tokens, those read from the provider's prompt cache
/// and those written to it, `write_1h` of the writes for an hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub read: u64,
    pub write: u64,
    pub write_1h: u64,
}

impl Price {
    /// Cost of a call, rounded up to the next micro-dollar so that many small
    /// calls never add up to less than they cost. Saturates at
    /// `Micros::MAX` (each product fits an i128, their sum may not); a
    /// negative price (never compiled) counts as free.
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> Micros {
        self.cost_cached(prompt_tokens, completion_tokens, CacheUse::default())
    }

    /// Cost of a call whose prompt used the provider's cache as `cache`
    /// says (each figure taken as at most what is left of the prompt, the
    /// hour-long writes as at most the writes), rounded up like
    /// [`Price::cost`].
    pub fn cost_cached(
        &self,
        prompt_tokens: u64,
        completion_tokens: u64,
        cache: CacheUse,
    ) -> Micros {
        let read = cache.read.min(prompt_tokens);
        let write = cache.write.min(prompt_tokens - read);
        let write_1h = cache.write_1h.min(write);
        let plain = prompt_tokens - read - write;
        let part = |tokens: u64, per_m: Micros| i128::from(tokens) * i128::from(per_m.max(0));
        let total = part(plain, self.input_per_m)
            .saturating_add(part(read, self.cached_input_per_m))
            .saturating_add(part(write - write_1h, self.cache_write_per_m))
            .saturating_add(part(write_1h, self.cache_write_1h_per_m))
            .saturating_add(part(completion_tokens, self.output_per_m));
        let micros = total.saturating_add(999_999) / 1_000_000;
        Micros::try_from(micros).unwrap_or(Micros::MAX)
    }

    /// The dearest price a prompt token may have (written to the cache, or
    /// not; for an hour when the request holds a one-hour breakpoint):
    /// what a reservation must assume.
    pub fn worst_input(&self, one_hour: bool) -> Price {
        let write = if one_hour {
            self.cache_write_per_m.max(self.cache_write_1h_per_m)
        } else {
            self.cache_write_per_m
        };
        Price {
            input_per_m: self.input_per_m.max(write),
            ..*self
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The UTC calendar day of a unix time in milliseconds, as `YYYY-MM-DD`.
pub fn utc_day(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Time left until the next UTC midnight.
pub fn until_next_utc_midnight(ms: i64) -> Duration {
    let into_day = ms.rem_euclid(86_400_000);
    Duration::from_millis((86_400_000 - into_day) as u64)
}

/// A unix time in milliseconds as RFC 3339 in UTC, to the second
/// (`2027-01-30T12:00:00Z`).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// Time left until the first day of the next UTC calendar month.
pub fn until_next_utc_month(ms: i64) -> Duration {
    let today = ms.div_euclid(86_400_000);
    // At most 31 steps to the next first of a month.
    let mut next = today + 1;
    while civil_from_days(next).2 != 1 {
        next += 1;
    }
    Duration::from_millis((next * 86_400_000 - ms) as u64)
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_calendar_days() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(951_782_400_000), "2000-02-29");
        assert_eq!(utc_day(1_798_761_599_999), "2026-12-31");
        assert_eq!(utc_day(1_798_761_600_000), "2027-01-01");
        assert_eq!(
            until_next_utc_midnight(1_798_761_599_000),
            Duration::from_secs(1)
        );
        assert_eq!(rfc3339(1_798_761_599_999), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // 2026-12-31T23:59:59Z, 2027-02-28T00:00:00Z, 2028-02-01T00:00:00Z.
        assert_eq!(
            until_next_utc_month(1_798_761_599_000),
            Duration::from_secs(1)
        );
        assert_eq!(
            until_next_utc_month(1_803_772_800_000),
            Duration::from_secs(86_400)
        );
        assert_eq!(
            until_next_utc_month(1_832_976_000_000),
            Duration::from_secs(29 * 86_400)
        );
    }

    #[test]
    fn prices_round_up_and_dollars_convert_exactly() {
        assert_eq!(usd_to_micros(0.15), Some(150_000));
        assert_eq!(usd_to_micros(5.0), Some(5_000_000));
        assert_eq!(usd_to_micros(-1.0), None);
        let p = Price {
            input_per_m: 150_000,
            output_per_m: 600_000,
            cached_input_per_m: 0,
            cache_write_per_m: 0,
            cache_write_1h_per_m: 0,
        };
        // 14 * 0.15 + 30 * 0.60 = 20.1 micro-dollars -> 21.
        assert_eq!(p.cost(14, 30), 21);
        assert_eq!(p.cost(0, 0), 0);
        assert_eq!(p.cost(1_000_000, 1_000_000), 750_000);
        assert_eq!(format_usd(1_250), "0.001250");
        assert_eq!(format_usd(Micros::MIN), "-9223372036854.775808");
        assert_eq!(format_usd(5_000_000), "5.000000");
    }

    #[test]
    fn costs_saturate_at_the_extremes() {
        let dearest = Price {
            input_per_m: Micros::MAX,
            output_per_m: Micros::MAX,
            cached_input_per_m: Micros::MAX,
            cache_write_per_m: Micros::MAX,
            cache_write_1h_per_m: Micros::MAX,
        };
        assert_eq!(dearest.cost(u64::MAX, u64::MAX), Micros::MAX);
        assert_eq!(dearest.cost(u64::MAX, 0), Micros::MAX);
        assert_eq!(dearest.cost(0, 0), 0);
        assert_eq!(dearest.cost(0, 1), Micros::MAX / 1_000_000 + 1);
        let free = Price::default();
        assert_eq!(free.cost(u64::MAX, u64::MAX), 0);
        let negative = Price {
            input_per_m: Micros::MIN,
            output_per_m: -1,
            cached_input_per_m: 0,
            cache_write_per_m: 0,
            cache_write_1h_per_m: 0,
        };
        assert_eq!(negative.cost(u64::MAX, u64::MAX), 0);
    }

    #[test]
    fn cached_prompt_tokens_are_priced_as_cached_reads_and_writes() {
        // $3 input, $0.30 cache reads, $3.75 cache writes (5 minutes),
        // $6 for an hour, $15 output.
        let p = Price {
            input_per_m: 3_000_000,
            output_per_m: 15_000_000,
            cached_input_per_m: 300_000,
            cache_write_per_m: 3_750_000,
            cache_write_1h_per_m: 6_000_000,
        };
        let cache = |read, write, write_1h| CacheUse {
            read,
            write,
            write_1h,
        };
        // 1,000 plain + 8,000 read + 1,000 written, 100 out:
        // 3,000 + 2,400 + 3,750 + 1,500 = 10,650 micro-dollars.
        assert_eq!(p.cost_cached(10_000, 100, cache(8_000, 1_000, 0)), 10_650);
        // The same writes for an hour: 6,000 instead of 3,750.
        assert_eq!(
            p.cost_cached(10_000, 100, cache(8_000, 1_000, 1_000)),
            12_900
        );
        // Split: 400 for 5 minutes (1,500), 600 for an hour (3,600).
        assert_eq!(
            p.cost_cached(10_000, 100, cache(8_000, 1_000, 600)),
            3_000 + 2_400 + 1_500 + 3_600 + 1_500
        );
        assert_eq!(
            p.cost_cached(10_000, 100, CacheUse::default()),
            p.cost(10_000, 100)
        );
        // Reported cache figures never price more tokens than the prompt,
        // nor more hour-long writes than writes.
        assert_eq!(
            p.cost_cached(100, 0, cache(1_000, 1_000, 0)),
            p.cost_cached(100, 0, cache(100, 0, 0))
        );
        assert_eq!(
            p.cost_cached(100, 0, cache(40, 1_000, 0)),
            p.cost_cached(100, 0, cache(40, 60, 0))
        );
        assert_eq!(
            p.cost_cached(100, 0, cache(0, 60, 1_000)),
            p.cost_cached(100, 0, cache(0, 60, 60))
        );
        assert_eq!(
            p.cost_cached(u64::MAX, u64::MAX, cache(u64::MAX, 0, 0)),
            Micros::MAX
        );
        // A reservation assumes the dearest input: a cache write, for an
        // hour when the request asks for one.
        assert_eq!(p.worst_input(false).cost(1_000_000, 0), 3_750_000);
        assert_eq!(p.worst_input(true).cost(1_000_000, 0), 6_000_000);
    }
}
