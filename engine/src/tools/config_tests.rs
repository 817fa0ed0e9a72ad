//! Tests of `config.rs` helpers; compilation from YAML, with positions, is
//! tested in `engine/tests/tools.rs`.
use super::*;

#[test]
fn tool_names_follow_the_providers_rule() {
    for ok in ["a", "lookup_order", "Get-Order-2", &"x".repeat(64)] {
        assert!(valid_tool_name(ok), "{ok}");
    }
    for bad in ["", "a b", "a.b", "ordér", "a/b", "a:b", &"x".repeat(65)] {
        assert!(!valid_tool_name(bad), "{bad}");
    }
}

#[test]
fn limits_default_and_must_be_positive() {
    let mut errors = Vec::new();
    let mut error = |pos: Pos, msg: String| errors.push((pos, msg));
    assert_eq!(positive(&None, 50, "max_rows", "t", &mut error), Some(50));
    let seven = Some(Spanned::new(7, Pos { line: 3, col: 9 }));
    assert_eq!(positive(&seven, 50, "max_rows", "t", &mut error), Some(7));
    let zero = Some(Spanned::new(0, Pos { line: 4, col: 9 }));
    assert_eq!(positive(&zero, 50, "max_rows", "t", &mut error), None);
    assert_eq!(
        errors,
        [(
            Pos { line: 4, col: 9 },
            "max_rows of tool \"t\" must be at least 1".to_string()
        )]
    );
}

#[test]
fn unchecked_databases_count_every_name_as_declared() {
    assert!(Databases::unchecked().is_declared("anything"));
    assert!(!Databases::default().is_declared("anything"));
    assert_eq!(Databases::default().iter().count(), 0);
}
