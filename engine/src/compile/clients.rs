//! A pipeline's rules for what its clients may set (`clients:`), and the
//! check of a request against them. With no rules, every standard
//! parameter passes through; the pipeline's ceiling, timeouts, budgets
//! and retries hold whatever a client sets.

use std::path::Path;

use super::Cx;
use crate::config::{RawClients, Spanned, diag};
use crate::provider::{Message, Params, Role, ToolSpec};

/// The parameters a client may set, by their request names.
pub const PARAMS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "top_logprobs",
    "n",
    "response_format",
    "tool_choice",
    "parallel_tool_calls",
    "thinking",
];

/// The numeric parameters and the range each API allows (`n` counts
/// choices: a request without it asks for one).
const NUMERIC: &[(&str, f64, f64)] = &[
    ("temperature", 0.0, 2.0),
    ("top_p", 0.0, 1.0),
    ("top_k", 0.0, 1e9),
    ("presence_penalty", -2.0, 2.0),
    ("frequency_penalty", -2.0, 2.0),
    ("top_logprobs", 0.0, 20.0),
    ("n", 1.0, 128.0),
];

/// The names of the numeric parameters, which `bounds` may name.
pub(crate) fn numeric_params() -> Vec<&'static str> {
    NUMERIC.iter().map(|(name, ..)| *name).collect()
}

/// The numeric parameters that take whole numbers only.
const WHOLE: &[&str] = &["top_k", "top_logprobs", "n"];

/// The client API a request came in through: the fields a 400 names are
/// that API's, as its client sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientApi {
    /// OpenAI's Chat Completions, whose names [`PARAMS`] uses.
    #[default]
    ChatCompletions,
    /// Anthropic's Messages.
    Messages,
}

/// How the client of a request names the fields Sluice checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldNames {
    pub api: ClientApi,
    /// Where the request's first prompt-cache breakpoint sits, as the
    /// client sent it (`system[1].cache_control`).
    pub cache_control: Option<String>,
}

impl FieldNames {
    pub fn messages() -> Self {
        FieldNames {
            api: ClientApi::Messages,
            cache_control: None,
        }
    }

    /// The request field of parameter `field` (its name in [`PARAMS`]),
    /// or None when this API has no such field.
    pub fn param(&self, field: &str) -> Option<&'static str> {
        let known = PARAMS.iter().copied().find(|p| *p == field);
        match self.api {
            ClientApi::ChatCompletions => known,
            ClientApi::Messages => match known? {
                "stop" => Some("stop_sequences"),
                "user" => Some("metadata.user_id"),
                "parallel_tool_calls" => Some("tool_choice.disable_parallel_tool_use"),
                p @ ("temperature" | "top_p" | "top_k" | "tool_choice" | "thinking") => Some(p),
                _ => None,
            },
        }
    }

    /// A field a check names (a parameter, `tools`, `cache_control`), as
    /// the client sent it; what this API has no name for keeps Sluice's.
    pub fn field(&self, field: &str) -> String {
        if field == "cache_control" {
            return self
                .cache_control
                .clone()
                .unwrap_or_else(|| field.to_string());
        }
        self.param(field).unwrap_or(field).to_string()
    }

    /// Message `i` of the prompt, a system one: the Messages API sends
    /// its system prompt in the top-level `system`.
    pub fn system_message(&self, i: usize) -> String {
        match self.api {
            ClientApi::ChatCompletions => format!("messages[{i}]"),
            ClientApi::Messages => "system".to_string(),
        }
    }

    /// The name of tool `i` of the request.
    pub fn tool_name(&self, i: usize) -> String {
        match self.api {
            ClientApi::ChatCompletions => format!("tools[{i}].function.name"),
            ClientApi::Messages => format!("tools[{i}].name"),
        }
    }

    /// The tool a `tool_choice` names.
    pub fn chosen_tool(&self) -> &'static str {
        match self.api {
            ClientApi::ChatCompletions => "tool_choice",
            ClientApi::Messages => "tool_choice.name",
        }
    }
}

/// What a client's system messages do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SystemRule {
    /// After the pipeline's own system prompt.
    #[default]
    Append,
    /// Instead of the pipeline's own, when the client sends any.
    Replace,
    /// Refused with a 400.
    Forbid,
}

/// A pipeline's compiled `clients:` rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientRules {
    /// None: every parameter of [`PARAMS`].
    pub params: Option<Vec<&'static str>>,
    /// (parameter, min, max), inclusive.
    pub bounds: Vec<(&'static str, f64, f64)>,
    /// Clients may bring tools (default true).
    pub tools: bool,
    pub system: SystemRule,
}

impl ClientRules {
    pub fn open() -> Self {
        ClientRules {
            tools: true,
            ..ClientRules::default()
        }
    }

    /// Checks what a client set. Err: (the field at fault, why), both
    /// in the words of the client's API (`names`).
    pub fn check(
        &self,
        pipeline: &str,
        params: &Params,
        tools: &[ToolSpec],
        messages: &[Message],
        names: &FieldNames,
    ) -> Result<(), (String, String)> {
        for field in set_fields(params) {
            if let Some(allowed) = &self.params
                && !allowed.contains(&field)
            {
                let may: Vec<&str> = allowed.iter().filter_map(|p| names.param(p)).collect();
                let field = names.field(field);
                return Err((
                    field.clone(),
                    format!(
                        "pipeline \"{pipeline}\" does not let clients set \"{field}\" (they may set: {})",
                        if may.is_empty() {
                            "nothing".to_string()
                        } else {
                            may.join(", ")
                        }
                    ),
                ));
            }
        }
        for &(field, min, max) in &self.bounds {
            if let Some(v) = numeric(params, field)
                && !(min..=max).contains(&v)
            {
                // A request without `n` asks for one choice: a client of
                // an API without `n` cannot ask for more.
                if names.param(field).is_none() {
                    return Err((
                        "model".into(),
                        format!(
                            "pipeline \"{pipeline}\" answers with {min} to {max} choices ({field}), which this API cannot ask for; call another pipeline"
                        ),
                    ));
                }
                let field = names.field(field);
                return Err((
                    field.clone(),
                    format!("pipeline \"{pipeline}\" allows {field} from {min} to {max}, not {v}"),
                ));
            }
        }
        if !self.tools && !tools.is_empty() {
            return Err((
                "tools".into(),
                format!("pipeline \"{pipeline}\" does not let clients bring tools"),
            ));
        }
        if self.system == SystemRule::Forbid
            && let Some(i) = messages.iter().position(|m| m.role == Role::System)
        {
            return Err((
                names.system_message(i),
                format!(
                    "pipeline \"{pipeline}\" has its own system prompt and does not let clients send one"
                ),
            ));
        }
        Ok(())
    }
}

/// The parameters set in `p`, by their request names.
pub fn set_fields(p: &Params) -> Vec<&'static str> {
    let set = [
        p.temperature.is_some(),
        p.top_p.is_some(),
        p.top_k.is_some(),
        !p.stop.is_empty(),
        p.seed.is_some(),
        p.presence_penalty.is_some(),
        p.frequency_penalty.is_some(),
        p.logit_bias.is_some(),
        p.user.is_some(),
        p.logprobs,
        p.top_logprobs.is_some(),
        p.n.is_some(),
        p.response_format.is_some(),
        p.tool_choice.is_some(),
        p.parallel_tool_calls.is_some(),
        p.thinking.is_some(),
    ];
    PARAMS
        .iter()
        .zip(set)
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect()
}

fn numeric(p: &Params, field: &str) -> Option<f64> {
    match field {
        "temperature" => p.temperature,
        "top_p" => p.top_p,
        "top_k" => p.top_k.map(f64::from),
        "presence_penalty" => p.presence_penalty,
        "frequency_penalty" => p.frequency_penalty,
        "top_logprobs" => p.top_logprobs.map(f64::from),
        // Always some: a request without n asks for one choice, which a
        // pipeline's min applies to as well.
        "n" => Some(f64::from(p.choices())),
        _ => None,
    }
}

fn known(name: &Spanned<String>, file: &Path, cx: &mut Cx, what: &str) -> Option<&'static str> {
    if let Some(p) = PARAMS.iter().find(|p| **p == name.value) {
        return Some(p);
    }
    let hint = diag::suggest(&name.value, PARAMS.iter().copied())
        .map(|s| format!(" (did you mean \"{s}\"?)"))
        .unwrap_or_default();
    cx.error(
        file,
        name.pos,
        format!(
            "unknown parameter \"{}\" in {what}{hint}; clients may set {}",
            name.value,
            PARAMS.join(", ")
        ),
    );
    None
}

impl Cx {
    /// Compiles `clients:`; None (after reporting why) when it makes no
    /// sense. `temperature` is the pipeline's own, which must be within
    /// the bounds it sets for clients.
    pub(super) fn client_rules(
        &mut self,
        file: &Path,
        raw: Option<Spanned<RawClients>>,
        temperature: Option<&Spanned<f64>>,
    ) -> Option<ClientRules> {
        let Some(raw) = raw else {
            return Some(ClientRules::open());
        };
        let before = self.diags.len();
        let mut rules = ClientRules::open();
        if let Some(list) = &raw.value.params {
            let mut names = Vec::new();
            for n in list {
                if let Some(p) = known(n, file, self, "clients.params") {
                    if names.contains(&p) {
                        self.error(file, n.pos, format!("\"{p}\" is listed twice"));
                    }
                    names.push(p);
                }
            }
            rules.params = Some(names);
        }
        for (name, bound) in &raw.value.bounds {
            let Some(p) = known(name, file, self, "clients.bounds") else {
                continue;
            };
            let Some(&(_, lo, hi)) = NUMERIC.iter().find(|(n, _, _)| *n == p) else {
                self.error(
                    file,
                    name.pos,
                    format!(
                        "\"{p}\" is not a number; bounds apply to {}",
                        NUMERIC.iter().map(|n| n.0).collect::<Vec<_>>().join(", ")
                    ),
                );
                continue;
            };
            if rules.params.as_ref().is_some_and(|l| !l.contains(&p)) {
                self.error(
                    file,
                    name.pos,
                    format!("bounds for \"{p}\", which clients.params does not let clients set"),
                );
            }
            let (min, max) = (bound.value.min.as_ref(), bound.value.max.as_ref());
            if min.is_none() && max.is_none() {
                self.error(
                    file,
                    bound.pos,
                    format!("bounds for \"{p}\" need min, max or both"),
                );
                continue;
            }
            for b in [min, max].into_iter().flatten() {
                if WHOLE.contains(&p) && b.value.fract() != 0.0 {
                    self.error(
                        file,
                        b.pos,
                        format!("{p} takes whole numbers; {} is not one", b.value),
                    );
                } else if !(lo..=hi).contains(&b.value) {
                    self.error(
                        file,
                        b.pos,
                        format!("{p} goes from {lo} to {hi}; {} is outside", b.value),
                    );
                }
            }
            let (min_v, max_v) = (min.map_or(lo, |m| m.value), max.map_or(hi, |m| m.value));
            if min_v > max_v {
                self.error(
                    file,
                    bound.pos,
                    format!("bounds for \"{p}\": min {min_v} is above max {max_v}"),
                );
            }
            if p == "temperature"
                && let Some(t) = temperature
                && !(min_v..=max_v).contains(&t.value)
            {
                self.error(
                    file,
                    t.pos,
                    format!("the pipeline's temperature {} is outside the bounds it sets for clients ({min_v} to {max_v})", t.value),
                );
            }
            rules.bounds.push((p, min_v, max_v));
        }
        if let Some(t) = &raw.value.tools {
            rules.tools = t.value;
        }
        if let Some(s) = &raw.value.system {
            rules.system = match s.value.as_str() {
                "append" => SystemRule::Append,
                "replace" => SystemRule::Replace,
                "forbid" => SystemRule::Forbid,
                other => {
                    self.error(
                        file,
                        s.pos,
                        format!(
                            "unknown clients.system \"{other}\", expected append, replace or forbid"
                        ),
                    );
                    SystemRule::Append
                }
            };
        }
        (self.diags.len() == before).then_some(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Message, Role};

    #[test]
    fn open_rules_let_everything_through() {
        let p = Params {
            temperature: Some(2.0),
            seed: Some(1),
            stop: vec!["x".into()],
            ..Params::default()
        };
        assert_eq!(set_fields(&p), ["temperature", "stop", "seed"]);
        let tools = [ToolSpec {
            name: "t".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
            strict: None,
            cache_control: None,
        }];
        let system = [Message::new(Role::System, "s")];
        assert!(
            ClientRules::open()
                .check("p", &p, &tools, &system, &FieldNames::default())
                .is_ok()
        );
    }

    #[test]
    fn each_rule_names_the_field_it_refuses() {
        let rules = ClientRules {
            params: Some(vec!["temperature"]),
            bounds: vec![("temperature", 0.0, 1.0)],
            tools: false,
            system: SystemRule::Forbid,
        };
        let field = |p: Params, tools: &[ToolSpec], m: &[Message]| {
            rules
                .check("p", &p, tools, m, &FieldNames::default())
                .err()
                .map(|(f, _)| f)
        };
        let t = |v| Params {
            temperature: Some(v),
            ..Params::default()
        };
        assert_eq!(field(t(1.0), &[], &[]), None);
        assert_eq!(field(t(1.01), &[], &[]).as_deref(), Some("temperature"));
        let seeded = Params {
            seed: Some(3),
            ..Params::default()
        };
        assert_eq!(field(seeded, &[], &[]).as_deref(), Some("seed"));
        let tool = ToolSpec {
            name: "t".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
            strict: None,
            cache_control: None,
        };
        assert_eq!(
            field(Params::default(), &[tool], &[]).as_deref(),
            Some("tools")
        );
        let msgs = [
            Message::new(Role::User, "u"),
            Message::new(Role::System, "s"),
        ];
        assert_eq!(
            field(Params::default(), &[], &msgs).as_deref(),
            Some("messages[1]")
        );
    }

    #[test]
    fn a_messages_client_is_told_its_own_field_names() {
        let names = FieldNames::messages();
        let named: Vec<(&str, Option<&str>)> =
            PARAMS.iter().map(|p| (*p, names.param(p))).collect();
        assert_eq!(
            named,
            [
                ("temperature", Some("temperature")),
                ("top_p", Some("top_p")),
                ("top_k", Some("top_k")),
                ("stop", Some("stop_sequences")),
                ("seed", None),
                ("presence_penalty", None),
                ("frequency_penalty", None),
                ("logit_bias", None),
                ("user", Some("metadata.user_id")),
                ("logprobs", None),
                ("top_logprobs", None),
                ("n", None),
                ("response_format", None),
                ("tool_choice", Some("tool_choice")),
                (
                    "parallel_tool_calls",
                    Some("tool_choice.disable_parallel_tool_use")
                ),
                ("thinking", Some("thinking")),
            ]
        );
        // Chat Completions clients send Sluice's own names.
        let chat = FieldNames::default();
        assert!(PARAMS.iter().all(|p| chat.param(p) == Some(*p)));
        assert_eq!(chat.system_message(2), "messages[2]");
        assert_eq!(names.system_message(2), "system");

        let rules = ClientRules {
            params: Some(vec!["temperature", "stop", "seed"]),
            system: SystemRule::Forbid,
            ..ClientRules::open()
        };
        let user = Params {
            user: Some("u".into()),
            ..Params::default()
        };
        let (field, why) = rules.check("p", &user, &[], &[], &names).unwrap_err();
        assert_eq!(field, "metadata.user_id");
        assert_eq!(
            why,
            "pipeline \"p\" does not let clients set \"metadata.user_id\" (they may set: temperature, stop_sequences)"
        );
        let system = [Message::new(Role::System, "s")];
        let (field, _) = rules
            .check("p", &Params::default(), &[], &system, &names)
            .unwrap_err();
        assert_eq!(field, "system");
    }

    #[test]
    fn choices_and_logprobs_can_be_restricted() {
        let ask = |n: Option<u32>, logprobs: bool, top: Option<u32>| Params {
            n,
            logprobs,
            top_logprobs: top,
            ..Params::default()
        };
        assert_eq!(
            set_fields(&ask(Some(3), true, Some(2))),
            ["logprobs", "top_logprobs", "n"]
        );
        assert!(set_fields(&ask(None, false, None)).is_empty());

        let capped = ClientRules {
            bounds: vec![("n", 1.0, 2.0), ("top_logprobs", 0.0, 5.0)],
            ..ClientRules::open()
        };
        let refused = |r: &ClientRules, p: Params| {
            r.check("chat", &p, &[], &[], &FieldNames::default()).err()
        };
        assert_eq!(refused(&capped, ask(Some(2), true, Some(5))), None);
        let (field, why) = refused(&capped, ask(Some(3), false, None)).unwrap();
        assert_eq!(field, "n");
        assert!(
            why.contains("pipeline \"chat\"") && why.contains("not 3"),
            "{why}"
        );
        let (field, _) = refused(&capped, ask(None, true, Some(6))).unwrap();
        assert_eq!(field, "top_logprobs");

        // A min above one refuses a request that asks for one choice.
        let several = ClientRules {
            bounds: vec![("n", 2.0, 4.0)],
            ..ClientRules::open()
        };
        assert_eq!(refused(&several, ask(None, false, None)).unwrap().0, "n");
        assert_eq!(refused(&several, ask(Some(4), false, None)), None);

        // logprobs is a flag clients.params may leave out.
        let plain = ClientRules {
            params: Some(vec!["temperature"]),
            ..ClientRules::open()
        };
        assert_eq!(
            refused(&plain, ask(None, true, None)).unwrap().0,
            "logprobs"
        );
        assert_eq!(refused(&plain, ask(Some(2), false, None)).unwrap().0, "n");
        assert_eq!(refused(&plain, ask(None, false, None)), None);
    }
}
