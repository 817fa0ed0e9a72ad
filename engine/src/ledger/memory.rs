//! The in-memory ledger (`storage: memory`): the same semantics as the SQL
//! stores, kept in this process only. For tests on tokio's paused clock
//! (where a database worker thread would let virtual time run away) and
//! for throwaway demos; nothing survives a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::report::Row;
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend, period, rate};

#[derive(Default)]
struct State {
    requests: HashMap<String, (Row, String, Vec<String>)>,
    budgets: BTreeMap<(String, String), Spend>,
    /// Thresholds fired: (scope, period, ppm) → when.
    alerts: BTreeMap<(String, String, i64), i64>,
    buckets: HashMap<String, rate::BucketState>,
    /// Each pending request's token buckets and the tokens it took.
    rates: HashMap<String, (Vec<String>, i64)>,
}

#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

fn new_row(o: &Opening, now: i64, day: &str, status: &str) -> Row {
    Row {
        id: o.id.clone(),
        started_at_ms: now,
        ended_at_ms: None,
        day: day.to_string(),
        pipeline: o.pipeline.clone(),
        provider: o.provider.clone(),
        model: o.model.clone(),
        status: status.to_string(),
        prompt_tokens: 0,
        completion_tokens: 0,
        estimated: false,
        reserved_micros: 0,
        cost_micros: 0,
        ttft_ms: None,
        duration_ms: None,
        tool_calls: 0,
        error_code: None,
        request_id: o.request_id.clone(),
        usage_anomaly: None,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        api_key: o.api_key.clone(),
        team: o.team.clone(),
        cache_write_1h_tokens: 0,
    }
}

/// Adds `add` to `to`, saturating: the SQL stores do the same.
fn add(to: &mut i64, add: i64) {
    *to = to.saturating_add(add);
}

impl MemStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn open(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
    ) -> Result<Admit, LedgerError> {
        let mut st = self.state();
        // Check every limit and scope first, then take from all: one lock,
        // one step.
        let mut taken = Vec::with_capacity(o.rates.len());
        for charge in &o.rates {
            let state = st
                .buckets
                .get(&charge.bucket)
                .copied()
                .unwrap_or(rate::BucketState {
                    fill: 0,
                    updated_ms: now,
                });
            match rate::take(state, charge, now) {
                (Some(next), _) => taken.push((charge.bucket.clone(), next)),
                (None, standing) => {
                    return Ok(Admit::RateLimited {
                        bucket: charge.bucket.clone(),
                        standing,
                    });
                }
            }
        }
        for scope in &o.scopes {
            let s = st
                .budgets
                .get(&(scope.key.clone(), period(&scope.key, day).to_string()))
                .copied()
                .unwrap_or(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            if o.reserve_micros > scope.limit_micros - s.spent_micros - s.reserved_micros {
                return Ok(Admit::Exhausted {
                    scope: scope.key.clone(),
                    limit_micros: scope.limit_micros,
                    spent_micros: s.spent_micros,
                });
            }
        }
        for scope in &o.scopes {
            let s = st
                .budgets
                .entry((scope.key.clone(), period(&scope.key, day).to_string()))
                .or_insert(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            add(&mut s.reserved_micros, o.reserve_micros);
        }
        st.buckets.extend(taken);
        let tokens = o.rates.iter().filter(|r| r.is_tokens());
        st.rates.insert(
            o.id.clone(),
            (
                tokens.clone().map(|r| r.bucket.clone()).collect(),
                tokens.map(|r| r.amount).next().unwrap_or(0),
            ),
        );
        let mut row = new_row(o, now, day, "pending");
        row.reserved_micros = if o.scopes.is_empty() {
            0
        } else {
            o.reserve_micros
        };
        let scopes = o.scopes.iter().map(|s| s.key.clone()).collect();
        st.requests
            .insert(o.id.clone(), (row, instance.to_string(), scopes));
        Ok(Admit::Admitted)
    }

    pub fn record_rejected(
        &self,
        instance: &str,
        o: &Opening,
        now: i64,
        day: &str,
        status: &str,
        error_code: &str,
    ) {
        let mut st = self.state();
        let mut row = new_row(o, now, day, status);
        row.ended_at_ms = Some(now);
        row.duration_ms = Some(0);
        row.error_code = Some(error_code.to_string());
        st.requests
            .entry(o.id.clone())
            .or_insert((row, instance.to_string(), Vec::new()));
    }

    pub fn settle(&self, id: &str, s: &Settlement, now: i64) -> Settled {
        let mut st = self.state();
        let Some((row, _, scopes)) = st.requests.get_mut(id) else {
            return Settled::default();
        };
        if row.status != "pending" {
            return Settled::default();
        }
        let (charged, anomaly) = super::store::charge(s, row.reserved_micros, !scopes.is_empty());
        row.status = s.status.to_string();
        row.ended_at_ms = Some(now);
        row.provider = s.provider.clone();
        row.model = s.model.clone();
        row.prompt_tokens = super::store::stored_tokens(s.prompt_tokens);
        row.completion_tokens = super::store::stored_tokens(s.completion_tokens);
        row.cache_read_tokens = super::store::stored_tokens(s.cache_read_tokens);
        row.cache_write_tokens = super::store::stored_tokens(s.cache_write_tokens);
        row.cache_write_1h_tokens = super::store::stored_tokens(s.cache_write_1h_tokens);
        row.estimated = s.estimated;
        row.cost_micros = charged;
        row.usage_anomaly = anomaly;
        row.ttft_ms = s.ttft_ms;
        row.duration_ms = Some(s.duration_ms);
        row.tool_calls = i64::from(s.tool_calls);
        row.error_code = s.error_code.map(str::to_string);
        let (day, reserved, scopes) = (row.day.clone(), row.reserved_micros, scopes.clone());
        let mut spends = Vec::new();
        for scope in scopes {
            let b = st
                .budgets
                .entry((scope.clone(), period(&scope, &day).to_string()))
                .or_insert(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            b.reserved_micros -= reserved;
            add(&mut b.spent_micros, charged);
            spends.push((scope, *b));
        }
        if let Some((buckets, tokens)) = st.rates.remove(id) {
            let back = super::store::token_refund(s, tokens);
            for bucket in buckets {
                if let Some(b) = st.buckets.get_mut(&bucket) {
                    b.fill = (b.fill - back).max(0);
                }
            }
        }
        Settled { day, spends }
    }

    pub fn end_pending(&self, id: &str, status: &str, now: i64) -> bool {
        let mut st = self.state();
        let Some((row, _, scopes)) = st.requests.get_mut(id) else {
            return false;
        };
        if row.status != "pending" {
            return false;
        }
        row.status = status.to_string();
        row.error_code = Some(status.to_string());
        row.cost_micros = row.reserved_micros;
        row.ended_at_ms = Some(now);
        let (day, reserved, scopes) = (row.day.clone(), row.reserved_micros, scopes.clone());
        for scope in scopes {
            if let Some(b) = st
                .budgets
                .get_mut(&(scope.clone(), period(&scope, &day).to_string()))
            {
                b.reserved_micros -= reserved;
                add(&mut b.spent_micros, reserved);
            }
        }
        true
    }

    pub fn interrupt_pending_of(&self, instance: &str, now: i64) -> u64 {
        let ids: Vec<String> = self
            .state()
            .requests
            .iter()
            .filter(|(_, (r, i, _))| i == instance && r.status == "pending")
            .map(|(id, _)| id.clone())
            .collect();
        ids.iter()
            .filter(|id| self.end_pending(id, "interrupted", now))
            .count() as u64
    }

    pub fn claim_alert(&self, scope: &str, day: &str, ppm: i64, now: i64) -> bool {
        let mut state = self.state();
        let key = (scope.to_string(), day.to_string(), ppm);
        if state.alerts.contains_key(&key) {
            return false;
        }
        state.alerts.insert(key, now);
        true
    }

    /// The alerts fired in `day` or `month`; an alert in memory counts as
    /// delivered once claimed (nothing is kept of its delivery).
    pub fn alerts(&self, day: &str, month: &str) -> Vec<super::console::AlertFired> {
        let mut out: Vec<_> = self
            .state()
            .alerts
            .iter()
            .filter(|((_, p, _), _)| p == day || p == month)
            .map(|((scope, period, ppm), at)| super::console::AlertFired {
                scope: scope.clone(),
                period: period.clone(),
                threshold_ppm: *ppm,
                fired_at_ms: *at,
                delivered: true,
            })
            .collect();
        out.sort_by(|a, b| {
            (a.fired_at_ms, &a.scope, a.threshold_ppm).cmp(&(
                b.fired_at_ms,
                &b.scope,
                b.threshold_ppm,
            ))
        });
        out
    }

    pub fn spend(&self, scope: &str, day: &str) -> Spend {
        self.state()
            .budgets
            .get(&(scope.to_string(), day.to_string()))
            .copied()
            .unwrap_or(Spend {
                spent_micros: 0,
                reserved_micros: 0,
            })
    }

    pub fn rows_since(&self, since_ms: i64) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .state()
            .requests
            .values()
            .filter(|(r, _, _)| r.started_at_ms >= since_ms)
            .map(|(r, _, _)| r.clone())
            .collect();
        rows.sort_by_key(|r| r.started_at_ms);
        rows
    }

    pub fn rows_of(&self, request_id: &str) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .state()
            .requests
            .values()
            .filter(|(r, _, _)| r.request_id == request_id)
            .map(|(r, _, _)| r.clone())
            .collect();
        rows.sort_by(|a, b| (a.started_at_ms, &a.id).cmp(&(b.started_at_ms, &b.id)));
        rows
    }
}
