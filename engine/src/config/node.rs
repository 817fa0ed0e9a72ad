//! A YAML document as a tree of positioned nodes, and a serde `Deserializer`
//! over it.
//!
//! serde stops at the first error, but users fixing a file want every
//! problem at once. Parsing into this tree first (with `serde-saphyr`, strict
//! booleans, leading-zero numbers kept as strings) and deserializing from it
//! lets us (a) report *every* unknown key with its position and a suggestion,
//! without failing, and (b) put a `line:col` on every error, including the
//! ones serde raises (missing field, wrong type).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::diag::Pos;

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub pos: Pos,
}

impl Node {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Null => "null".into(),
            Kind::Bool(b) => format!("boolean `{b}`"),
            Kind::Int(i) => format!("integer `{i}`"),
            Kind::UInt(u) => format!("integer `{u}`"),
            Kind::Float(x) => format!("number `{x}`"),
            Kind::Str(s) => format!("string {s:?}"),
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }
}

/// Parses one YAML document. A syntax error comes back with its position.
pub fn parse(text: &str) -> Result<Node, (Pos, String)> {
    // The parser and the deserializers recurse once per nesting level: at
    // its default of 64 levels, a debug build overflows a 2 MiB thread
    // stack (`sluice test` threads, tokio workers) before the limit is
    // reached. 32 levels is far more than any config needs.
    //
    // The other limits bound what a file can make the parser do: aliases
    // replay their anchor's events, so a few hundred bytes of nested
    // aliases expand into millions of events at the defaults (seconds of
    // CPU). A configuration holds hundreds of nodes, a large key list tens
    // of thousands.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_events = MAX_EVENTS;
    budget.max_nodes = MAX_EVENTS / 2;
    budget.max_recorded_anchor_events = MAX_EVENTS / 2;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
        budget: Some(budget),
    };
    match serde_saphyr::from_str_with_options::<Option<Node>>(text, options) {
        Ok(Some(node)) => Ok(node),
        Ok(None) => Ok(Node {
            kind: Kind::Null,
            pos: Pos::START,
        }),
        Err(e) => {
            let pos = e
                .location()
                .map(|l| Pos {
                    line: l.line() as u32,
                    col: l.column() as u32,
                })
                .unwrap_or(Pos::START);
            let msg = match budget_breach(&e) {
                Some(b) => describe_breach(b),
                None => tidy_parser_message(&e.to_string()),
            };
            Err((pos, format!("invalid yaml: {msg}")))
        }
    }
}

/// Deepest nesting of lists and mappings accepted.
const MAX_DEPTH: usize = 32;
/// Most parser events in one file, aliases expanded.
const MAX_EVENTS: usize = 200_000;

/// The limit a file broke, under the wrappers that add locations.
fn budget_breach(mut e: &serde_saphyr::Error) -> Option<&serde_saphyr::budget::BudgetBreach> {
    loop {
        match e {
            serde_saphyr::Error::AliasError { error, .. }
            | serde_saphyr::Error::WithSnippet { error, .. } => e = error,
            serde_saphyr::Error::Budget { breach, .. } => return Some(breach),
            _ => return None,
        }
    }
}

/// A broken parser limit in words for the file's author.
fn describe_breach(b: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match b {
        B::Depth { .. } => format!("lists and mappings nested deeper than {MAX_DEPTH} levels"),
        B::Aliases { .. }
        | B::AliasAnchorRatio { .. }
        | B::RecordedAnchorEvents { .. }
        | B::RecordedAnchorBytes { .. } => {
            "aliases expand to more than a configuration can hold".into()
        }
        B::Events { .. } | B::Nodes { .. } => {
            format!(
                "more than {MAX_EVENTS} values (aliases expanded): too large for a configuration"
            )
        }
        _ => "too large or too complex for a configuration file".into(),
    }
}

/// serde-saphyr's messages carry their own position (as a prefix or a
/// suffix) and sometimes a hint for the library's users; we print our own
/// position and speak to the author of the file.
fn tidy_parser_message(raw: &str) -> String {
    let mut msg = raw.lines().next().unwrap_or("syntax error").trim();
    msg = msg.trim_start_matches("error: ");
    if let Some((head, tail)) = msg.split_once(": ")
        && head.starts_with("line ")
    {
        msg = tail;
    }
    if let Some(i) = msg.rfind(" at line ")
        && msg[i + 9..]
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == ' ' || c.is_ascii_alphabetic())
        && msg[i..].contains("column")
    {
        msg = &msg[..i];
    }
    if let Some(i) = msg.find(", set DuplicateKeyPolicy") {
        msg = &msg[..i];
    }
    msg.trim().to_string()
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<Kind>::deserialize(d)?;
        Ok(Node {
            kind: s.value,
            pos: Pos {
                line: s.referenced.line() as u32,
                col: s.referenced.column() as u32,
            },
        })
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KindVisitor;
        impl<'de> Visitor<'de> for KindVisitor {
            type Value = Kind;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any yaml value")
            }
            fn visit_unit<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_none<E>(self) -> Result<Kind, E> {
                Ok(Kind::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Kind, D::Error> {
                Kind::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Kind, E> {
                Ok(Kind::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Kind, E> {
                Ok(Kind::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Kind, E> {
                Ok(Kind::UInt(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Kind, E> {
                Ok(Kind::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Kind, E> {
                Ok(Kind::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Kind, E> {
                Ok(Kind::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = a.next_element()? {
                    items.push(n);
                }
                Ok(Kind::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Kind, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    entries.push(entry);
                }
                Ok(Kind::Map(entries))
            }
        }
        d.deserialize_any(KindVisitor)
    }
}

/// A value with the position it was written at.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct Spanned<T> {
    pub value: T,
    #[serde(skip)]
    pub pos: Pos,
}

impl<T> Spanned<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Self { value, pos }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq for Spanned<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Spanned<T> {}
impl<T: PartialOrd> PartialOrd for Spanned<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.value.partial_cmp(&other.value)
    }
}
impl<T: Ord> Ord for Spanned<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.value.cmp(&other.value)
    }
}

const SPANNED: &str = "$sluice::Spanned";
const SPANNED_FIELDS: &[&str] = &["$line", "$col", "$value"];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a positioned value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Spanned<T>, A::Error> {
                let (Some(_), Some(line)) = (a.next_key::<String>()?, Some(a.next_value()?)) else {
                    return Err(de::Error::custom("positioned value without a line"));
                };
                let (Some(_), Some(col)) = (a.next_key::<String>()?, Some(a.next_value()?)) else {
                    return Err(de::Error::custom("positioned value without a column"));
                };
                let Some(_) = a.next_key::<String>()? else {
                    return Err(de::Error::custom("positioned value without a value"));
                };
                let value = a.next_value()?;
                Ok(Spanned {
                    value,
                    pos: Pos { line, col },
                })
            }
        }
        d.deserialize_struct(
            SPANNED,
            SPANNED_FIELDS,
            SpannedVisitor(std::marker::PhantomData),
        )
    }
}

// The serde `Deserializer` over the tree.
#[path = "node_de.rs"]
mod deserializer;
pub(crate) use deserializer::quoted_list;
pub use deserializer::{DeError, Note, from_node};

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
