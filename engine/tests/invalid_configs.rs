//! Data-driven checks of the configuration diagnostics.
//!
//! Every directory under `fixtures/invalid/` is a complete pipelines
//! directory with exactly the faults its name says, plus `expected.txt`: the
//! diagnostics `sluice check` prints for it, one per line, with paths
//! relative to the case directory (`pipeline.yaml:7:12: error: ...`).
//! Adding a case is adding a directory; no code changes.

use std::path::{MAIN_SEPARATOR_STR, Path, PathBuf};
use std::process::Command;

use sluice::compile::load_dir;
use sluice::config::{Diagnostic, Severity};

/// Fewer cases than this means the folder was not found or was emptied.
const MIN_CASES: usize = 20;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn invalid_root() -> PathBuf {
    workspace_root().join("fixtures").join("invalid")
}

/// Case directories, sorted by name.
fn cases() -> Vec<PathBuf> {
    let root = invalid_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// `file:line:col: severity: message`, like `Diagnostic`'s `Display`, with
/// the case directory stripped from the file and from paths in the message.
fn render(case_dir: &Path, d: &Diagnostic) -> String {
    let file = d.file.strip_prefix(case_dir).unwrap_or(&d.file);
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let prefix = format!("{}{MAIN_SEPARATOR_STR}", case_dir.display());
    format!(
        "{}:{}:{}: {severity}: {}",
        file.display(),
        d.pos.line,
        d.pos.col,
        d.message.replace(&prefix, "")
    )
}

fn expected_lines(case_dir: &Path) -> Result<Vec<String>, String> {
    let path = case_dir.join("expected.txt");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    Ok(text.lines().map(str::to_string).collect())
}

/// A line diff (longest common subsequence): `-` expected only, `+` actual
/// only, two spaces for lines both have.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out += &format!("    {}\n", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out += &format!("  - {}\n", expected[i]);
            i += 1;
        } else {
            out += &format!("  + {}\n", actual[j]);
            j += 1;
        }
    }
    out
}

/// What is wrong with one case, or `None` when it matches.
fn check_case(case_dir: &Path) -> Option<String> {
    let expected = match expected_lines(case_dir) {
        Ok(lines) => lines,
        Err(e) => return Some(e),
    };
    let actual: Vec<String> = match load_dir(case_dir) {
        Err(diags) => diags.iter().map(|d| render(case_dir, d)).collect(),
        Ok(catalog) => {
            let mut msg = format!(
                "expected errors, but it compiled ({} pipeline(s) ok)\n",
                catalog.pipelines.len()
            );
            for w in &catalog.warnings {
                msg += &format!("    {}\n", render(case_dir, w));
            }
            msg += "  expected:\n";
            for line in &expected {
                msg += &format!("  - {line}\n");
            }
            return Some(msg);
        }
    };
    if actual == expected {
        return None;
    }
    Some(format!(
        "diagnostics differ (- expected only, + actual only):\n{}",
        diff(&expected, &actual)
    ))
}

#[test]
fn every_invalid_case_reports_exactly_its_expected_diagnostics() {
    let cases = cases();
    assert!(
        cases.len() >= MIN_CASES,
        "expected at least {MIN_CASES} cases under {}, found {}",
        invalid_root().display(),
        cases.len()
    );
    let mut failures = Vec::new();
    for case_dir in &cases {
        if let Some(problem) = check_case(case_dir) {
            let name = case_dir.file_name().unwrap_or_default().to_string_lossy();
            failures.push(format!("--- fixtures/invalid/{name}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} invalid-config case(s) failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn the_example_pipelines_compile_without_errors() {
    let dir = workspace_root().join("pipelines");
    match load_dir(&dir) {
        Ok(catalog) => assert!(
            !catalog.pipelines.is_empty(),
            "{} compiled but holds no pipeline",
            dir.display()
        ),
        Err(diags) => panic!(
            "{} does not compile:\n{}",
            dir.display(),
            diags.iter().map(|d| format!("{d}\n")).collect::<String>()
        ),
    }
}

#[test]
fn sluice_check_prints_the_diagnostics_and_sets_the_exit_code() {
    let root = workspace_root();
    let case = "fixtures/invalid/several_problems";
    let expected = expected_lines(&root.join(case)).unwrap();
    let errors = expected.iter().filter(|l| l.contains(": error: ")).count();
    assert!(errors > 0, "{case}/expected.txt lists no error");

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", case])
        .current_dir(&root)
        .output()
        .expect("run sluice check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "sluice check {case} should exit 1\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Vec<&str> = stdout.lines().collect();
    for line in &expected {
        let want = format!("{case}/{line}");
        assert!(
            printed.contains(&want.as_str()),
            "sluice check {case}: missing line\n  {want}\nstdout:\n{stdout}"
        );
    }
    assert_eq!(
        printed.last().copied(),
        Some(format!("{errors} error(s)").as_str()),
        "sluice check {case}: last line should be the error count\nstdout:\n{stdout}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "pipelines"])
        .current_dir(&root)
        .output()
        .expect("run sluice check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sluice check pipelines should exit 0\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("pipelines: ") && stdout.contains(" pipeline(s) ok"),
        "sluice check pipelines: no success line\nstdout:\n{stdout}"
    );
}
