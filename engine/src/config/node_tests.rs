//! Tests of `node.rs`.
use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Inner {
    first_token: Spanned<String>,
    idle: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Outer {
    name: Spanned<String>,
    timeouts: Inner,
    n: Option<u32>,
}

#[test]
fn every_unknown_key_is_noted_with_position_and_suggestion() {
    let node =
        parse("name: a\ntimout: 1\ntimeouts:\n  first_tokn: 2s\n  first_token: 3s\n").unwrap();
    let (r, notes) = from_node::<Outer>(&node);
    let outer = r.unwrap();
    assert_eq!(outer.timeouts.first_token.pos, Pos { line: 5, col: 16 });
    assert_eq!(outer.name.pos, Pos { line: 1, col: 7 });
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0].pos, Pos { line: 2, col: 1 });
    assert!(notes[0].message.contains("did you mean \"timeouts\""));
    assert_eq!(notes[1].pos, Pos { line: 4, col: 3 });
    assert!(notes[1].message.contains("did you mean \"first_token\""));
}

#[test]
fn type_errors_carry_the_position_of_the_value() {
    let node = parse("name: a\ntimeouts: {first_token: 1s}\nn: -4\n").unwrap();
    let (r, _) = from_node::<Outer>(&node);
    let e = r.unwrap_err();
    assert_eq!(e.pos, Some(Pos { line: 3, col: 4 }));
    assert!(e.message.contains("-4"), "{}", e.message);
}

#[test]
fn missing_fields_point_at_their_mapping() {
    let node = parse("name: a\ntimeouts:\n  idle: 2s\n").unwrap();
    let (r, _) = from_node::<Outer>(&node);
    let e = r.unwrap_err();
    assert_eq!(e.message, "missing field \"first_token\"");
    assert_eq!(e.pos, Some(Pos { line: 3, col: 3 }));
}

#[test]
fn yaml_scalars_resolve_strictly() {
    let node = parse("a: yes\nb: 0123\nc: true\n").unwrap();
    let Kind::Map(entries) = node.kind else {
        panic!()
    };
    assert_eq!(entries[0].1.kind, Kind::Str("yes".into()));
    assert_eq!(entries[1].1.kind, Kind::Str("0123".into()));
    assert_eq!(entries[2].1.kind, Kind::Bool(true));
}

#[test]
fn syntax_errors_have_a_position() {
    let (pos, msg) = parse("a: [1, 2\nb: 3").unwrap_err();
    assert_eq!(pos.line, 2);
    assert!(msg.starts_with("invalid yaml"), "{msg}");
}

#[test]
fn parser_limits_are_refused_in_words_not_as_debug_output() {
    let deep = format!("a: {}1{}", "[".repeat(40), "]".repeat(40));
    let (pos, msg) = parse(&deep).unwrap_err();
    assert_eq!(
        msg, "invalid yaml: lists and mappings nested deeper than 32 levels",
        "at {pos:?}"
    );

    // Nine levels of nine aliases: 387 million values from 366 bytes.
    let mut bomb = "l0: &l0 [x, x, x, x, x, x, x, x, x]\n".to_string();
    for l in 1..9 {
        let refs = vec![format!("*l{}", l - 1); 9].join(", ");
        bomb.push_str(&format!("l{l}: &l{l} [{refs}]\n"));
    }
    let (_, msg) = parse(&bomb).unwrap_err();
    assert!(
        msg.starts_with("invalid yaml: ") && !msg.contains('{') && !msg.contains("Events"),
        "{msg}"
    );
    assert!(msg.contains("aliases") || msg.contains("values"), "{msg}");
}
