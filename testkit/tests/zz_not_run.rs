//! The summary of tests that did not run. Tests that need a service this
//! machine may not have (Postgres, the Python and Node SDKs, Chromium)
//! pass without it and leave a record (`engine/tests/common/skip.rs`);
//! this binary, named to run last in `cargo test --workspace`, prints them
//! on the real stderr so that a green run says plainly what it did not
//! prove, then clears the records for the next run.
//!
//! A record whose variable is set in this run is stale (left by an earlier
//! run that stopped before this binary) and is dropped unprinted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

#[test]
fn tests_that_did_not_run_are_listed_at_the_end() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-run");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    // By variable: what to set it to, and the tests that wanted it.
    let mut by_var: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let _ = std::fs::remove_file(e.path());
        let mut parts = text.trim_end().splitn(3, '\t');
        let (Some(var), Some(how), Some(what)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            continue;
        }
        let slot = by_var
            .entry(var.to_owned())
            .or_insert_with(|| (how.to_owned(), Vec::new()));
        slot.1.push(what.to_owned());
    }
    if by_var.is_empty() {
        return;
    }
    let total: usize = by_var.values().map(|(_, t)| t.len()).sum();
    let mut out = String::new();
    let rule = "=".repeat(78);
    out.push_str(&format!(
        "\n{rule}\nNOT RUN: {total} test(s) passed without running, for want of a service.\n\
         They run in CI; to run them here, set (see docs/testing.md):\n"
    ));
    for (var, (how, mut tests)) in by_var {
        tests.sort();
        out.push_str(&format!("\n  {var}: {how}\n"));
        for t in tests {
            out.push_str(&format!("    - {t}\n"));
        }
    }
    out.push_str(&format!("{rule}\n"));
    let _ = std::io::stderr().write_all(out.as_bytes());
}
