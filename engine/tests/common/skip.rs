//! Tests that need a service this machine may not have (Postgres, an SDK,
//! a browser) pass without it, but never silently: each says so on the
//! real stderr (the harness hides what passing tests print) and leaves a
//! record that `testkit/tests/zz_not_run.rs`, the last test binary of
//! `cargo test --workspace`, sums up at the end.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

/// Where the records go: shared by every test binary of the workspace.
pub fn records_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("not-run")
}

/// Says that `what` did not run for want of `var` (`how`: what to set it
/// to), and records it for the summary.
pub fn skipped(what: &str, var: &str, how: &str) {
    let _ = writeln!(std::io::stderr(), "skipped: {what} (set {var} to {how})");
    // libtest names each test's thread after the test.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let bin = std::env::args()
        .next()
        .and_then(|a| {
            let stem = std::path::Path::new(&a).file_stem()?.to_str()?.to_owned();
            // cargo names test binaries `NAME-HASH`.
            Some(
                stem.rsplit_once('-')
                    .map_or(stem.clone(), |(n, _)| n.to_owned()),
            )
        })
        .unwrap_or_default();
    let what = format!("{bin}::{test} ({what})");
    let dir = records_dir();
    let name: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join(name), format!("{var}\t{how}\t{what}\n"));
    }
}

/// The value of `var`, or `None` after [`skipped`].
pub fn env_or_skip(var: &str, what: &str, how: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skipped(what, var, how);
            None
        }
    }
}
