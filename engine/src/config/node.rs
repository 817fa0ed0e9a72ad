//! A YAML document as a tree of positioned nodes, and a serde `Deserializer`
//! over it.
//!
//! serde stops at the first error, but users fixing a file want every
//! problem at once. Parsing into this tree first (with `serde-saphyr`, strict
//! booleans, leading-zero numbers kept as strings) and deserializing from it
//! lets us (a) report *every* unknown key with its position and a suggestion,
//! without failing, and (b) put a `line:col` on every error, including the
//! ones serde raises (missing field, wrong type).

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde::{Deserialize, Serialize};

use super::diag::{Pos, suggest};

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

/// An error raised while deserializing a node; the position is filled in by
/// the innermost node that saw it.
#[derive(Debug, Clone)]
pub struct DeError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError {
            pos: None,
            message: msg.to_string(),
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Self::custom(format_args!("missing field \"{field}\""))
    }
    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, found {}",
            expected_in_words(exp),
            unexpected_in_words(&unexp)
        ))
    }
    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        Self::custom(format_args!(
            "expected {}, found {}",
            expected_in_words(exp),
            unexpected_in_words(&unexp)
        ))
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let hint = suggest(variant, expected.iter().copied())
            .map(|s| format!(" (did you mean \"{s}\"?)"))
            .unwrap_or_default();
        Self::custom(format_args!(
            "unknown value \"{variant}\", expected one of {}{hint}",
            quoted_list(expected)
        ))
    }
}

/// serde names Rust types ("i64", "u32"); a YAML author thinks in numbers.
fn expected_in_words(exp: &dyn de::Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        _ => s,
    }
}

fn unexpected_in_words(u: &de::Unexpected) -> String {
    match u {
        de::Unexpected::Signed(i) => format!("{i}"),
        de::Unexpected::Unsigned(i) => format!("{i}"),
        de::Unexpected::Float(x) => format!("{x}"),
        de::Unexpected::Str(s) => format!("string {s:?}"),
        de::Unexpected::Unit => "null".into(),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Seq => "a list".into(),
        other => other.to_string(),
    }
}

pub(crate) fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A problem the deserializer noticed and recorded without failing.
#[derive(Debug, Clone)]
pub struct Note {
    pub pos: Pos,
    pub message: String,
}

/// Deserializes `T` from `node`. Unknown keys are recorded in the returned
/// notes and skipped; the first hard error (wrong type, missing field) fails.
pub fn from_node<'a, T: Deserialize<'a>>(node: &'a Node) -> (Result<T, DeError>, Vec<Note>) {
    let notes = RefCell::new(Vec::new());
    let result = T::deserialize(NodeDe {
        node,
        notes: &notes,
    });
    (result, notes.into_inner())
}

#[derive(Clone, Copy)]
struct NodeDe<'a, 'n> {
    node: &'a Node,
    notes: &'n RefCell<Vec<Note>>,
}

impl NodeDe<'_, '_> {
    fn at<T>(&self, r: Result<T, DeError>) -> Result<T, DeError> {
        r.map_err(|mut e| {
            e.pos.get_or_insert(self.node.pos);
            e
        })
    }

    fn invalid(&self, expected: &str) -> DeError {
        DeError {
            pos: Some(self.node.pos),
            message: format!("expected {expected}, found {}", self.node.describe()),
        }
    }
}

macro_rules! forward_to_any {
    ($($m:ident)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
            self.deserialize_any(v)
        }
    )*};
}

impl<'de, 'n> Deserializer<'de> for NodeDe<'de, 'n> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Null => v.visit_unit(),
            Kind::Bool(b) => v.visit_bool(*b),
            Kind::Int(i) => v.visit_i64(*i),
            Kind::UInt(u) => v.visit_u64(*u),
            Kind::Float(x) => v.visit_f64(*x),
            Kind::Str(s) => v.visit_str(s),
            Kind::Seq(items) => v.visit_seq(Seq {
                items: items.iter(),
                notes: self.notes,
            }),
            Kind::Map(entries) => v.visit_map(Map {
                entries: entries.iter().collect::<Vec<_>>().into_iter(),
                value: None,
                notes: self.notes,
            }),
        };
        self.at(r)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match self.node.kind {
            Kind::Null => self.at(v.visit_none()),
            _ => v.visit_some(self),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        // Plain scalars that YAML resolved to numbers or booleans are still
        // usable as text (`name: 2024`), but null and collections are not.
        let r = match &self.node.kind {
            Kind::Str(s) => v.visit_str(s),
            Kind::Int(i) => v.visit_string(i.to_string()),
            Kind::UInt(u) => v.visit_string(u.to_string()),
            Kind::Float(x) => v.visit_string(x.to_string()),
            Kind::Bool(b) => v.visit_string(b.to_string()),
            _ => return Err(self.invalid("a string")),
        };
        self.at(r)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        self.deserialize_string(v)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        if name == SPANNED {
            return v.visit_map(SpannedAccess { de: self, step: 0 });
        }
        let Kind::Map(entries) = &self.node.kind else {
            return Err(self.invalid("a mapping"));
        };
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            match &entry.0.kind {
                Kind::Str(key) if fields.contains(&key.as_str()) => known.push(entry),
                _ => {
                    let key = match &entry.0.kind {
                        Kind::Str(s) => s.clone(),
                        _ => entry.0.describe(),
                    };
                    let hint = suggest(&key, fields.iter().copied())
                        .map(|s| format!(" (did you mean \"{s}\"?)"))
                        .unwrap_or_default();
                    self.notes.borrow_mut().push(Note {
                        pos: entry.0.pos,
                        message: format!(
                            "unknown field \"{key}\", expected one of {}{hint}",
                            quoted_list(fields)
                        ),
                    });
                }
            }
        }
        let r = v.visit_map(Map {
            entries: known.into_iter(),
            value: None,
            notes: self.notes,
        });
        self.at(r)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Seq(_) => self.deserialize_any(v),
            _ => Err(self.invalid("a list")),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, DeError> {
        match &self.node.kind {
            Kind::Map(_) => self.deserialize_any(v),
            _ => Err(self.invalid("a mapping")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        let r = match &self.node.kind {
            Kind::Str(s) => v.visit_enum(s.as_str().into_deserializer()),
            Kind::Map(entries) if entries.len() == 1 => v.visit_enum(Variant {
                key: &entries[0].0,
                value: NodeDe {
                    node: &entries[0].1,
                    notes: self.notes,
                },
            }),
            _ => return Err(self.invalid("a string")),
        };
        self.at(r)
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_bytes deserialize_byte_buf
        deserialize_unit deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(v)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }
}

struct Seq<'a, 'n> {
    items: std::slice::Iter<'a, Node>,
    notes: &'n RefCell<Vec<Note>>,
}

impl<'de> SeqAccess<'de> for Seq<'de, '_> {
    type Error = DeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDe {
                    node,
                    notes: self.notes,
                })
                .map(Some),
            None => Ok(None),
        }
    }
}

struct Map<'a, 'n> {
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    value: Option<&'a Node>,
    notes: &'n RefCell<Vec<Note>>,
}

impl<'de> MapAccess<'de> for Map<'de, '_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(NodeDe {
                    node: k,
                    notes: self.notes,
                })
                .map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let node = self
            .value
            .take()
            .ok_or_else(|| <DeError as de::Error>::custom("value requested before key"))?;
        seed.deserialize(NodeDe {
            node,
            notes: self.notes,
        })
    }
}

struct SpannedAccess<'a, 'n> {
    de: NodeDe<'a, 'n>,
    step: u8,
}

impl<'de> MapAccess<'de> for SpannedAccess<'de, '_> {
    type Error = DeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some(name) = SPANNED_FIELDS.get(self.step as usize) else {
            return Ok(None);
        };
        seed.deserialize(de::value::StrDeserializer::<DeError>::new(name))
            .map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let step = self.step;
        self.step += 1;
        match step {
            0 => seed.deserialize(self.de.node.pos.line.into_deserializer()),
            1 => seed.deserialize(self.de.node.pos.col.into_deserializer()),
            _ => seed.deserialize(self.de),
        }
    }
}

struct Variant<'a, 'n> {
    key: &'a Node,
    value: NodeDe<'a, 'n>,
}

impl<'de, 'n> EnumAccess<'de> for Variant<'de, 'n> {
    type Error = DeError;
    type Variant = NodeDe<'de, 'n>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, NodeDe<'de, 'n>), DeError> {
        let key = seed.deserialize(NodeDe {
            node: self.key,
            notes: self.value.notes,
        })?;
        Ok((key, self.value))
    }
}

impl<'de> VariantAccess<'de> for NodeDe<'de, '_> {
    type Error = DeError;
    fn unit_variant(self) -> Result<(), DeError> {
        match self.node.kind {
            Kind::Null => Ok(()),
            _ => Err(self.invalid("nothing")),
        }
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_struct("", fields, v)
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
