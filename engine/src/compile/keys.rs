//! Compiling the `keys:` and `teams:` of `settings.yaml` into [`Auth`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::auth::{self, Access, ApiKey, Auth};

impl Cx {
    /// The declared keys. `routes` are the names of every pipeline
    /// declared, valid or not (a key naming a pipeline that failed its own
    /// checks must not also hear that it does not exist).
    pub(super) fn keys(
        &mut self,
        file: &Path,
        raw: &RawSettings,
        routes: &BTreeMap<String, (PathBuf, Pos)>,
    ) -> Auth {
        let mut teams: BTreeMap<&str, (Vec<Budget>, Option<crate::budget::RateLimit>)> =
            BTreeMap::new();
        for (name, team) in &raw.teams {
            if !auth::valid_name(&name.value) {
                self.bad_name(file, name, "team");
            }
            let budgets = match &team.value.budget {
                Some(b) => {
                    let scope = format!("team:{}", name.value);
                    budget::compile_key_budget(file, b, &scope, &mut self.diags).unwrap_or_default()
                }
                None => Vec::new(),
            };
            let scope = format!("team:{}", name.value);
            let rate = team
                .value
                .rate_limit
                .as_ref()
                .and_then(|r| budget::compile_rate_limit(file, r, &scope, &mut self.diags));
            teams.insert(&name.value, (budgets, rate));
        }
        let mut keys: HashMap<[u8; 32], Arc<ApiKey>> = HashMap::new();
        let mut names_by_hash: HashMap<[u8; 32], &str> = HashMap::new();
        for (name, key) in &raw.keys {
            let key = &key.value;
            if !auth::valid_name(&name.value) {
                self.bad_name(file, name, "key");
            }
            let digest = auth::parse_hash(key.hash.value.trim());
            match digest {
                None => self.error(
                    file,
                    key.hash.pos,
                    "invalid key hash, expected sha256: and 64 hex digits, as printed by `sluice keys new NAME`",
                ),
                Some(d) => {
                    if let Some(first) = names_by_hash.insert(d, &name.value) {
                        self.error(
                            file,
                            key.hash.pos,
                            format!(
                                "key \"{}\" has the same hash as key \"{first}\": each key needs a secret of its own",
                                name.value
                            ),
                        );
                    }
                }
            }
            let pipelines = self.access(file, name, &key.pipelines, routes);
            let mut budgets = match &key.budget {
                Some(b) => {
                    let scope = format!("key:{}", name.value);
                    budget::compile_key_budget(file, b, &scope, &mut self.diags).unwrap_or_default()
                }
                None => Vec::new(),
            };
            let scope = format!("key:{}", name.value);
            let mut rate_limits: Vec<_> = key
                .rate_limit
                .as_ref()
                .and_then(|r| budget::compile_rate_limit(file, r, &scope, &mut self.diags))
                .into_iter()
                .collect();
            if let Some(team) = &key.team {
                match teams.get(team.value.as_str()) {
                    Some((team_budgets, team_rate)) => {
                        budgets.extend(team_budgets.iter().cloned());
                        rate_limits.extend(team_rate.iter().cloned());
                    }
                    None => {
                        let hint = crate::config::diag::suggest(&team.value, teams.keys().copied())
                            .map(|s| format!(" (did you mean \"{s}\"?)"))
                            .unwrap_or_default();
                        self.error(
                            file,
                            team.pos,
                            format!(
                                "key \"{}\" names team \"{}\", which is not declared under teams{hint}",
                                name.value, team.value
                            ),
                        );
                    }
                }
            }
            if let (Some(d), Some(pipelines)) = (digest, pipelines) {
                let admin = key.admin.as_ref().is_some_and(|a| a.value);
                keys.insert(
                    d,
                    Arc::new(ApiKey {
                        name: name.value.clone(),
                        team: key.team.as_ref().map(|t| t.value.clone()),
                        owner: key.owner.clone(),
                        pipelines,
                        budgets,
                        rate_limits,
                        metrics: key.metrics.as_ref().is_some_and(|m| m.value) || admin,
                        admin,
                    }),
                );
            }
        }
        let allow = raw.server.allow_unauthenticated.as_ref();
        if let Some(a) = allow.filter(|a| a.value)
            && !raw.keys.is_empty()
        {
            self.error(
                file,
                a.pos,
                "allow_unauthenticated: true cannot be combined with keys: with keys declared every request needs one",
            );
        }
        Auth::new(keys, allow.is_some_and(|a| a.value))
    }

    /// A key's `pipelines:` list: `["*"]` or names of declared pipelines.
    fn access(
        &mut self,
        file: &Path,
        name: &Spanned<String>,
        raw: &[Spanned<String>],
        routes: &BTreeMap<String, (PathBuf, Pos)>,
    ) -> Option<Access> {
        let key = name.value.as_str();
        if raw.is_empty() {
            // A key that may call nothing is a mistake, not a policy.
            self.error(
                file,
                name.pos,
                format!("key \"{key}\" has an empty pipelines list: name the pipelines it may call, or [\"*\"] for all"),
            );
            return None;
        }
        if raw.iter().any(|p| p.value == "*") {
            if raw.len() > 1 {
                self.error(
                    file,
                    raw[0].pos,
                    format!("key \"{key}\": \"*\" already means every pipeline; list it alone"),
                );
                return None;
            }
            return Some(Access::All);
        }
        let mut ok = true;
        let mut names = BTreeSet::new();
        for p in raw {
            if !routes.contains_key(&p.value) {
                let hint =
                    crate::config::diag::suggest(&p.value, routes.keys().map(String::as_str))
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                self.error(
                    file,
                    p.pos,
                    format!(
                        "key \"{key}\" names pipeline \"{}\", which is not declared{hint}",
                        p.value
                    ),
                );
                ok = false;
            }
            names.insert(p.value.clone());
        }
        ok.then_some(Access::Only(names))
    }

    fn bad_name(&mut self, file: &Path, name: &Spanned<String>, what: &str) {
        self.error(
            file,
            name.pos,
            format!(
                "invalid {what} name \"{}\": use 1 to 64 letters, digits, '_', '-' or '.'",
                name.value
            ),
        );
    }
}
