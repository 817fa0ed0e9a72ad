//! The serde `Deserializer` over a [`Node`] tree: every error gets the
//! position of the innermost node that saw it, and unknown keys are
//! collected as notes (with a suggestion) instead of failing.

use std::cell::RefCell;
use std::fmt;

use serde::Deserialize;
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::{Kind, Node, SPANNED, SPANNED_FIELDS};
use crate::config::diag::{Pos, suggest};

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
