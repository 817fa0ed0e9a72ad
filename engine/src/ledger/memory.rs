//! The in-memory ledger (`storage: memory`): the same semantics as the SQL
//! stores, kept in this process only. For tests on tokio's paused clock
//! (where a database worker thread would let virtual time run away) and
//! for throwaway demos; nothing survives a restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::report::Row;
use super::{Admit, LedgerError, Opening, Settled, Settlement, Spend};

#[derive(Default)]
struct State {
    requests: HashMap<String, (Row, String, Vec<String>)>,
    budgets: BTreeMap<(String, String), Spend>,
    alerts: BTreeSet<(String, String, i64)>,
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
    }
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
        // Check every scope first, then reserve on all: one lock, one step.
        for scope in &o.scopes {
            let s = st
                .budgets
                .get(&(scope.key.clone(), day.to_string()))
                .copied()
                .unwrap_or(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            if s.spent_micros + s.reserved_micros + o.reserve_micros > scope.daily_micros {
                return Ok(Admit::Exhausted {
                    scope: scope.key.clone(),
                    daily_micros: scope.daily_micros,
                    spent_micros: s.spent_micros,
                });
            }
        }
        for scope in &o.scopes {
            let s = st
                .budgets
                .entry((scope.key.clone(), day.to_string()))
                .or_insert(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            s.reserved_micros += o.reserve_micros;
        }
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
        row.status = s.status.to_string();
        row.ended_at_ms = Some(now);
        row.provider = s.provider.clone();
        row.model = s.model.clone();
        row.prompt_tokens = s.prompt_tokens as i64;
        row.completion_tokens = s.completion_tokens as i64;
        row.estimated = s.estimated;
        row.cost_micros = s.cost_micros;
        row.ttft_ms = s.ttft_ms;
        row.duration_ms = Some(s.duration_ms);
        row.tool_calls = i64::from(s.tool_calls);
        row.error_code = s.error_code.map(str::to_string);
        let (day, reserved, scopes) = (row.day.clone(), row.reserved_micros, scopes.clone());
        let mut spends = Vec::new();
        for scope in scopes {
            let b = st
                .budgets
                .entry((scope.clone(), day.clone()))
                .or_insert(Spend {
                    spent_micros: 0,
                    reserved_micros: 0,
                });
            b.reserved_micros -= reserved;
            b.spent_micros += s.cost_micros;
            spends.push((scope, *b));
        }
        Settled { day, spends }
    }

    pub fn claim_alert(&self, scope: &str, day: &str, ppm: i64) -> bool {
        self.state()
            .alerts
            .insert((scope.to_string(), day.to_string(), ppm))
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

    pub fn row(&self, id: &str) -> Option<Row> {
        self.state().requests.get(id).map(|(r, _, _)| r.clone())
    }
}
