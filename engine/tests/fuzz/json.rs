//! JSON generators for the structure-aware targets: values written as text
//! (so numbers can be anything JSON's grammar allows, `1e400` and 30-digit
//! integers included), fields that are well typed or deliberately not, and
//! nesting deeper than any parser should follow.

use proptest::prelude::*;

/// A JSON value whose numbers are kept as written.
#[derive(Debug, Clone)]
pub enum J {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
    /// Text spliced in as is (deep nesting, broken JSON).
    Raw(String),
}

impl J {
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) | J::Raw(n) => out.push_str(n),
            J::Str(s) => out.push_str(&serde_json::to_string(s).expect("a string serializes")),
            J::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            J::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).expect("a string serializes"));
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }

    pub fn str(s: &str) -> J {
        J::Str(s.to_string())
    }

    pub fn int(n: impl std::fmt::Display) -> J {
        J::Num(n.to_string())
    }
}

/// Numbers at and past every bound a decoder might hold them in.
pub fn number() -> impl Strategy<Value = J> {
    prop_oneof![
        any::<i64>().prop_map(J::int),
        any::<u64>().prop_map(J::int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| J::Num(format!("{f:e}"))),
        prop_oneof![
            Just("0"),
            Just("-0"),
            Just("-1"),
            Just("1.5"),
            Just("1e3"),
            Just("1E-7"),
            Just("4294967295"),
            Just("4294967296"),
            Just("18446744073709551615"),
            Just("18446744073709551616"),
            Just("-9223372036854775808"),
            Just("-9223372036854775809"),
            Just("1e400"),
            Just("-1e400"),
            Just("123456789012345678901234567890"),
            Just("0.0000000000000000000001"),
        ]
        .prop_map(|s| J::Num(s.to_string())),
    ]
}

/// Strings: plain, unicode, escapes and control characters, sometimes long.
pub fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z ]{0,12}",
        2 => any::<String>(),
        1 => "[\\x00-\\x1f\"\\\\/\u{2028}\u{fffd}]{0,8}",
        1 => (1usize..20_000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Any JSON value, a few levels deep.
pub fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number(),
        string().prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            proptest::collection::vec(("[a-z_]{0,8}", inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// Arrays or objects nested far past any recursion limit.
pub fn deep() -> impl Strategy<Value = J> {
    (1usize..20_000, any::<bool>()).prop_map(|(depth, arrays)| {
        J::Raw(if arrays {
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        } else {
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        })
    })
}

/// A generated value and whether it is well typed for where it goes.
pub type Typed = BoxedStrategy<(J, bool)>;
/// A field that may be absent: `(value, well_typed)`.
pub type Field = BoxedStrategy<(Option<J>, bool)>;

/// Values that are always well typed.
pub fn good(s: impl Strategy<Value = J> + 'static) -> Typed {
    s.prop_map(|v| (v, true)).boxed()
}

/// A field: absent and `null` count as well typed only for optional
/// fields; `wrong` values are of a type the field never has; deep values
/// may or may not parse, so they claim nothing.
pub fn field(optional: bool, good: Typed, wrong: impl Strategy<Value = J> + 'static) -> Field {
    prop_oneof![
        2 => Just((None, optional)),
        1 => Just((Some(J::Null), optional)),
        8 => good.prop_map(|(v, ok)| (Some(v), ok)),
        2 => wrong.prop_map(|v| (Some(v), false)),
        1 => deep().prop_map(|v| (Some(v), false)),
    ]
    .boxed()
}

/// An object of `fields` (absent ones left out) in a shuffled order, with
/// unknown fields mixed in; well typed when every field is.
pub fn object(fields: Vec<(&'static str, Field)>) -> Typed {
    let (names, strategies): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    (
        strategies,
        proptest::collection::vec(("x_[a-z]{1,6}", value()), 0..3),
    )
        .prop_flat_map(move |(values, extra)| {
            let ok = values.iter().all(|(_, ok)| *ok);
            let mut fields: Vec<(String, J)> = names
                .iter()
                .zip(values)
                .filter_map(|(k, (v, _))| v.map(|v| (k.to_string(), v)))
                .collect();
            fields.extend(extra);
            (Just(fields).prop_shuffle(), Just(ok))
        })
        .prop_map(|(fields, ok)| (J::Obj(fields), ok))
        .boxed()
}

/// An array of `item`s; well typed when every item is.
pub fn array(item: Typed, max: usize) -> Typed {
    proptest::collection::vec(item, 0..max)
        .prop_map(|items| {
            let ok = items.iter().all(|(_, ok)| *ok);
            (J::Arr(items.into_iter().map(|(v, _)| v).collect()), ok)
        })
        .boxed()
}

/// A well-typed u32, often small.
pub fn u32_value() -> Typed {
    good(prop_oneof![Just(0u32), Just(1), any::<u32>()].prop_map(J::int))
}

/// A well-typed u64, often at its extremes.
pub fn u64_value() -> Typed {
    good(prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()].prop_map(J::int))
}

/// A well-typed string.
pub fn str_value() -> Typed {
    good(string().prop_map(J::Str))
}

/// One of `names`, or any string.
pub fn name_value(names: &'static [&'static str]) -> Typed {
    good(prop_oneof![
        3 => proptest::sample::select(names).prop_map(J::str),
        1 => string().prop_map(J::Str),
    ])
}

/// Not a string.
pub fn non_string() -> impl Strategy<Value = J> {
    prop_oneof![
        number(),
        any::<bool>().prop_map(J::Bool),
        Just(J::Arr(vec![])),
        Just(J::Obj(vec![])),
    ]
}

/// Not a u32: negative, fractional, too large, or not a number.
pub fn non_u32() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::int(-1)),
        Just(J::int(4_294_967_296u64)),
        Just(J::Num("1.5".into())),
        Just(J::Num("1e400".into())),
        any::<bool>().prop_map(J::Bool),
        string().prop_map(J::Str),
    ]
}

/// Not a u64.
pub fn non_u64() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::int(-1)),
        Just(J::Num("18446744073709551616".into())),
        Just(J::Num("0.5".into())),
        Just(J::Num("-1e400".into())),
        string().prop_map(J::Str),
        Just(J::Arr(vec![])),
    ]
}

/// Not an object.
pub fn non_object() -> impl Strategy<Value = J> {
    prop_oneof![non_string(), string().prop_map(J::Str)]
        .prop_filter("not an object", |v| !matches!(v, J::Obj(_)))
}

/// Not an array.
pub fn non_array() -> impl Strategy<Value = J> {
    prop_oneof![
        number(),
        any::<bool>().prop_map(J::Bool),
        Just(J::Obj(vec![])),
        string().prop_map(J::Str),
    ]
}
