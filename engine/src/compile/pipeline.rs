//! Compiling one pipeline file: its model (and fallbacks), limits,
//! timeouts and budget.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::clients::ClientRules;
use super::*;

impl Cx {
    /// A fallback model: a declared provider, a readable recording for
    /// replay, and a price when a budget applies.
    fn model_ref(
        &mut self,
        file: &Path,
        m: &crate::config::RawModel,
        providers: &BTreeMap<String, ProviderEntry>,
        money: &MoneyCx,
        needs_price: bool,
        what: &str,
    ) -> Option<ModelRef> {
        let Some(entry) = providers.get(&m.provider.value) else {
            let hint = diag::suggest(&m.provider.value, providers.keys().map(String::as_str))
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            self.error(
                file,
                m.provider.pos,
                format!("unknown provider \"{}\" in {what}{hint}", m.provider.value),
            );
            return None;
        };
        if let Some(replay) = &entry.replay
            && let Err(msg) = replay.preload(&m.name.value)
        {
            self.error(file, m.name.pos, msg);
            return None;
        }
        if let Some(t) = &m.temperature {
            self.error(
                file,
                t.pos,
                format!("a {what} uses the pipeline's temperature; remove it here"),
            );
            return None;
        }
        let price = money.prices.get(&m.name.value).copied();
        if price.is_none() && needs_price {
            self.error(
                file,
                m.name.pos,
                format!("{what} model \"{}\" has no price in settings.yaml; a budget needs a price for every model it pays for", m.name.value),
            );
            return None;
        }
        Some(ModelRef {
            provider_name: m.provider.value.clone(),
            provider: entry.provider.clone(),
            model: m.name.value.clone(),
            price,
        })
    }

    fn retries(
        &mut self,
        file: &Path,
        r: &Spanned<crate::config::RawRetries>,
    ) -> Option<RetryPolicy> {
        let mut policy = RetryPolicy::NONE;
        let mut ok = true;
        match u32::try_from(r.attempts.value) {
            Ok(n) if (1..=10).contains(&n) => policy.attempts = n,
            _ => {
                self.error(file, r.attempts.pos, format!("retries.attempts must be between 1 and 10 (tries of each model, the first included), found {}", r.attempts.value));
                ok = false;
            }
        }
        if let Some(b) = &r.backoff {
            match self.duration(file, b, "retries.backoff") {
                Some(d) => policy.backoff = d,
                None => ok = false,
            }
        }
        if let Some(b) = &r.max_backoff {
            match self.duration(file, b, "retries.max_backoff") {
                Some(d) => policy.max_backoff = d,
                None => ok = false,
            }
        }
        if ok && policy.max_backoff < policy.backoff {
            let pos = r.max_backoff.as_ref().map_or(r.pos, |b| b.pos);
            self.error(
                file,
                pos,
                "retries.max_backoff is shorter than retries.backoff",
            );
            ok = false;
        }
        ok.then_some(policy)
    }

    fn downgrade_target(
        &mut self,
        file: &Path,
        m: &crate::config::RawModel,
        providers: &BTreeMap<String, ProviderEntry>,
        money: &MoneyCx,
        main_price: Option<Price>,
        d: &mut Vec<Diagnostic>,
    ) -> Option<budget::Downgrade> {
        let Some(entry) = providers.get(&m.provider.value) else {
            d.push(Diagnostic::error(
                file,
                m.provider.pos,
                format!("unknown provider \"{}\" in downgrade_to", m.provider.value),
            ));
            return None;
        };
        if let Some(replay) = &entry.replay
            && let Err(msg) = replay.preload(&m.name.value)
        {
            d.push(Diagnostic::error(file, m.name.pos, msg));
            return None;
        }
        let Some(price) = money.prices.get(&m.name.value).copied() else {
            d.push(Diagnostic::error(
                file,
                m.name.pos,
                format!(
                    "downgrade model \"{}\" has no price in settings.yaml",
                    m.name.value
                ),
            ));
            return None;
        };
        if let Some(main) = main_price
            && price.input_per_m >= main.input_per_m
            && price.output_per_m >= main.output_per_m
        {
            d.push(Diagnostic::error(
                file,
                m.name.pos,
                format!(
                    "downgrade model \"{}\" is not cheaper than the pipeline's model",
                    m.name.value
                ),
            ));
            return None;
        }
        Some(budget::Downgrade {
            provider_name: m.provider.value.clone(),
            provider: entry.provider.clone(),
            model: m.name.value.clone(),
            price,
        })
    }

    pub(super) fn pipeline(
        &mut self,
        file: &Path,
        raw: RawPipeline,
        providers: &BTreeMap<String, ProviderEntry>,
        declared: &Option<Vec<String>>,
        money: &MoneyCx,
    ) -> Option<Pipeline> {
        let mut ok = true;
        let name = &raw.name;
        if !valid_route_name(&name.value) {
            self.error(
                file,
                name.pos,
                format!(
                    "invalid pipeline name \"{}\", expected lowercase letters, digits, '-' and '_' (it becomes the route /v1/pipelines/NAME)",
                    name.value
                ),
            );
            ok = false;
        }

        let provider = match providers.get(&raw.model.provider.value) {
            Some(p) => Some(p),
            None => {
                let is_declared = declared
                    .as_ref()
                    .is_none_or(|names| names.contains(&raw.model.provider.value));
                if !is_declared {
                    let hint = diag::suggest(
                        &raw.model.provider.value,
                        providers.keys().map(String::as_str),
                    )
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                    let declared = if providers.is_empty() {
                        "no provider is declared in settings.yaml".to_string()
                    } else {
                        format!(
                            "declared providers: {}",
                            providers
                                .keys()
                                .map(|k| format!("\"{k}\""))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    self.error(
                        file,
                        raw.model.provider.pos,
                        format!(
                            "unknown provider \"{}\"{hint}; {declared}",
                            raw.model.provider.value
                        ),
                    );
                }
                ok = false;
                None
            }
        };

        if raw.model.name.value.trim().is_empty() {
            self.error(file, raw.model.name.pos, "model name is empty");
            ok = false;
        } else if let Some(replay) = provider.and_then(|p| p.replay.as_ref())
            && let Err(msg) = replay.preload(&raw.model.name.value)
        {
            self.error(file, raw.model.name.pos, msg);
            ok = false;
        }

        if let Some(t) = &raw.model.temperature
            && !(0.0..=2.0).contains(&t.value)
        {
            self.error(
                file,
                t.pos,
                format!("temperature {} is out of range, expected 0 to 2", t.value),
            );
            ok = false;
        }

        let max_tokens = raw.limits.max_tokens.value;
        if max_tokens.fract() != 0.0 || !(1.0..=f64::from(u32::MAX)).contains(&max_tokens) {
            self.error(
                file,
                raw.limits.max_tokens.pos,
                format!(
                    "max_tokens must be a whole number between 1 and {}, found {max_tokens}",
                    u32::MAX
                ),
            );
            ok = false;
        }

        let mut timeouts = Timeouts::DEFAULT;
        let mut durations_ok = true;
        let t = &raw.timeouts;
        for (slot, raw_d, what) in [
            (&mut timeouts.connect, &t.connect, "timeouts.connect"),
            (
                &mut timeouts.first_token,
                &t.first_token,
                "timeouts.first_token",
            ),
            (&mut timeouts.idle, &t.idle, "timeouts.idle"),
            (&mut timeouts.total, &t.total, "timeouts.total"),
        ] {
            if let Some(raw_d) = raw_d {
                match self.duration(file, raw_d, what) {
                    Some(d) => *slot = d,
                    None => durations_ok = false,
                }
            }
        }
        // A default longer than an explicit total shrinks to it; only
        // values the user wrote can contradict each other.
        for (d, raw_d) in [
            (&mut timeouts.connect, &t.connect),
            (&mut timeouts.first_token, &t.first_token),
            (&mut timeouts.idle, &t.idle),
        ] {
            if raw_d.is_none() {
                *d = (*d).min(timeouts.total);
            }
        }
        ok &= durations_ok;
        if durations_ok {
            let total_pos = t.total.as_ref().map(|s| s.pos);
            for (d, raw_d, what) in [
                (timeouts.connect, &t.connect, "connect"),
                (timeouts.first_token, &t.first_token, "first_token"),
                (timeouts.idle, &t.idle, "idle"),
            ] {
                if d > timeouts.total {
                    let pos = raw_d
                        .as_ref()
                        .map(|s| s.pos)
                        .or(total_pos)
                        .unwrap_or(Pos::START);
                    self.error(
                        file,
                        pos,
                        format!(
                            "timeouts.{what} ({}) is longer than timeouts.total ({}); it could never fire",
                            humantime::format_duration(d),
                            humantime::format_duration(timeouts.total)
                        ),
                    );
                    ok = false;
                }
            }
        }

        let price = money.prices.get(&raw.model.name.value).copied();
        if price.is_none() && (raw.budget.is_some() || money.global_budget) {
            self.error(
                file,
                raw.model.name.pos,
                format!(
                    "model \"{}\" has no price in settings.yaml (prices: {{\"{}\": {{input: ..., output: ...}}}}); a budget needs a price for every model it pays for",
                    raw.model.name.value, raw.model.name.value
                ),
            );
            ok = false;
        }
        let budget = match &raw.budget {
            None => None,
            Some(b) => {
                let main_price = price;
                let mut downgrade = |m: &crate::config::RawModel, d: &mut Vec<Diagnostic>| {
                    self.downgrade_target(file, m, providers, money, main_price, d)
                };
                let mut diags = Vec::new();
                let compiled = budget::compile_budget(
                    file,
                    b,
                    format!("pipeline:{}", raw.name.value),
                    &mut diags,
                    &mut downgrade,
                );
                ok &= compiled.is_some();
                self.diags.extend(diags);
                compiled
            }
        };
        let needs_price = raw.budget.is_some() || money.global_budget;
        let mut fallbacks = Vec::new();
        for m in &raw.fallbacks {
            match self.model_ref(file, m, providers, money, needs_price, "fallback") {
                Some(r) => fallbacks.push(r),
                None => ok = false,
            }
        }
        let retries = match &raw.retries {
            None => RetryPolicy::NONE,
            Some(r) => match self.retries(file, r) {
                Some(p) => p,
                None => {
                    ok = false;
                    RetryPolicy::NONE
                }
            },
        };
        let mut tools = Vec::new();
        crate::tools::check_unique(&raw.tools, file, &mut self.diags);
        for t in &raw.tools {
            match crate::tools::compile_tool(t, money.databases, file, &mut self.diags) {
                Some(tool) => tools.push(Arc::new(tool)),
                None => ok = false,
            }
        }
        let tool_specs: Arc<[crate::provider::ToolSpec]> = tools
            .iter()
            .map(|t| crate::provider::ToolSpec {
                name: t.name().to_string(),
                description: t.description().to_string(),
                parameters: t.parameters().clone(),
                strict: None,
                cache_control: None,
            })
            .collect();
        let count = |v: &Option<Spanned<f64>>,
                     what: &str,
                     max: f64,
                     ok: &mut bool,
                     this: &mut Self|
         -> Option<u64> {
            let v = v.as_ref()?;
            if v.value.fract() != 0.0 || !(1.0..=max).contains(&v.value) {
                this.error(
                    file,
                    v.pos,
                    format!(
                        "{what} must be a whole number between 1 and {max}, found {}",
                        v.value
                    ),
                );
                *ok = false;
                return None;
            }
            Some(v.value as u64)
        };
        let max_tool_rounds = count(
            &raw.limits.max_tool_rounds,
            "max_tool_rounds",
            32.0,
            &mut ok,
            self,
        )
        .map_or(DEFAULT_MAX_TOOL_ROUNDS, |v| v as u32);
        let max_total_tokens = count(
            &raw.limits.max_total_tokens,
            "max_total_tokens",
            1e9,
            &mut ok,
            self,
        );
        if !tools.is_empty() && needs_price && max_total_tokens.is_none() {
            // Without it, a request's rounds have no upper bound to reserve.
            self.error(
                file,
                raw.limits.max_tokens.pos,
                "a pipeline with tools and a budget needs limits.max_total_tokens (the tokens of all rounds together)",
            );
            ok = false;
        }
        let clients = self.client_rules(file, raw.clients, raw.model.temperature.as_ref());
        ok &= clients.is_some();
        let rate_limit = match &raw.rate_limit {
            Some(r) => {
                let scope = format!("pipeline:{}", raw.name.value);
                let compiled = budget::compile_rate_limit(file, r, &scope, &mut self.diags);
                ok &= compiled.is_some();
                compiled
            }
            None => None,
        };
        let provider = provider?;
        if let Some(w) = &provider.missing_key
            && !self.diags.contains(w)
        {
            self.diags.push(w.clone());
        }
        if !ok {
            return None;
        }
        Some(Pipeline {
            price,
            budget,
            rate_limit,
            global_budget: None,
            fallbacks,
            retries,
            tools,
            tool_specs,
            max_tool_rounds,
            max_total_tokens,
            clients: clients.unwrap_or_else(ClientRules::open),
            name: raw.name.value,
            description: raw.description,
            provider_name: raw.model.provider.value,
            provider: provider.provider.clone(),
            model: raw.model.name.value,
            temperature: raw.model.temperature.map(|t| t.value),
            system: raw.system,
            max_tokens: max_tokens as u32,
            timeouts,
        })
    }
}
fn valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric()
}
