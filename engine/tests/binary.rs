//! The `sluice` binary end to end: it serves the repository's own
//! `pipelines/` with no API key, logs one request id on every line of a
//! request, never logs the API key, and exits 0 on SIGTERM. Real time, but
//! bounded: every wait has a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sluice_testkit::{MockProvider, Reply, Script};

#[path = "common/raw.rs"]
mod raw;

struct Served {
    child: Child,
    addr: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &std::path::Path, envs: &[(&str, &str)], json_logs: bool) -> Served {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    if json_logs {
        cmd.arg("--log-json");
    }
    // A fresh working directory: nothing lands in the repository.
    cmd.args(["serve", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .current_dir(tempdir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("SLUICE_LOG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("sluice starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while addr.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice logs that it is serving");
        if line.contains("serving") {
            let start = line
                .find("127.0.0.1:")
                .expect("address in the serving line");
            let rest = &line[start..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            addr = Some(rest[..end].to_string());
        }
    }
    Served {
        child,
        addr: addr.unwrap(),
        lines: rx,
    }
}

/// A plain HTTP/1.1 POST; returns the whole response.
fn post(addr: &str, path: &str, body: &str) -> String {
    raw::exchange(addr, "POST", path, &[], body)
}

fn repo_root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository's `pipelines/` copied into a fresh directory beside a
/// link to `fixtures/`, so that what its settings name relative to
/// themselves in `../data/` (the ledger, the shop database) lands there
/// and not in the repository.
fn repo_pipelines_copy() -> std::path::PathBuf {
    let root = tempdir();
    let dir = root.join("pipelines");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(repo_root().join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::os::unix::fs::symlink(repo_root().join("fixtures"), root.join("fixtures")).unwrap();
    dir
}

#[test]
fn serves_the_demo_pipeline_with_no_api_key_and_exits_0_on_sigterm() {
    let dir = repo_pipelines_copy();
    let served = serve(&dir, &[("OPENAI_API_KEY", "")], false);
    let resp = post(
        &served.addr,
        "/v1/pipelines/demo",
        r#"{"input":"What is the weather?"}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("event: start"));
    assert!(resp.contains("data: {\"text\":\" San\"}"));
    assert!(resp.contains("event: done"));
    // The support demo makes a real tool round on the seeded shop database.
    let resp = post(
        &served.addr,
        "/v1/pipelines/support",
        r#"{"input":"Where is order 7?"}"#,
    );
    assert!(resp.contains("event: tool_call"), "{resp}");
    assert!(resp.contains(r#""arguments":{"order_id":7}"#), "{resp}");
    assert!(resp.contains(r#""ok":true,"rows":1"#), "{resp}");
    assert!(resp.contains(r#"data: {"text":" delivered"}"#), "{resp}");
    // `storage: sqlite:../data/sluice.db` is relative to the settings
    // file, not to the working directory (another temporary directory).
    assert!(dir.join("../data/sluice.db").is_file());
    let mut served = served;
    let child = &mut served.child;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = child.try_wait().unwrap() {
            assert_eq!(code.code(), Some(0), "sluice exits 0 after SIGTERM");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sluice did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn logs_carry_the_request_id_and_never_the_api_key() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mock = rt
        .block_on(MockProvider::start(Script::single(Reply::fixture(
            "openai/text_stop.sse",
        ))))
        .unwrap();
    let dir = tempdir();
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "providers:\n  up:\n    kind: openai\n    base_url: {}\n    api_key_env: SLUICE_TEST_SECRET_KEY\n",
            mock.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("chat.yaml"),
        "name: chat\nmodel: {provider: up, name: gpt-4o-mini}\nlimits: {max_tokens: 64}\n",
    )
    .unwrap();
    let secret = "sk-test-0123456789abcdefSECRET";
    let served = serve(
        &dir,
        &[("SLUICE_TEST_SECRET_KEY", secret), ("SLUICE_LOG", "debug")],
        true,
    );
    let resp = post(
        &served.addr,
        "/v1/pipelines/chat",
        r#"{"input":"hi","stream":false}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let id_line = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
        .unwrap();
    let id = id_line.split(':').nth(1).unwrap().trim().to_string();
    // The provider got the key...
    let sent = mock.journal().requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {secret}").as_str())
    );
    // ...the logs never show it, and every line about the request names it.
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match served.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                let done = l.contains("request finished");
                lines.push(l);
                if done {
                    break;
                }
            }
            Err(_) => continue,
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("request finished")),
        "{lines:#?}"
    );
    for l in &lines {
        assert!(!l.contains(secret), "the API key was logged: {l}");
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        if v["span"].is_object() || v["spans"].is_array() {
            assert!(
                l.contains(&id),
                "a request log line without the request id: {l}"
            );
        }
    }
    drop(served);
    drop(mock);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn requests_cut_by_sigkill_are_recorded_as_interrupted_at_the_next_start() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Three words, then silence: the streams are mid-answer when the
    // server is killed.
    let reply = Reply::text(&["one", " two", " three"]).fault(sluice_testkit::Fault::StallAfter {
        events: 3,
        duration: None,
    });
    let mock = rt
        .block_on(MockProvider::start(Script::single(reply)))
        .unwrap();
    let dir = tempdir();
    let url = format!("sqlite://{}/ledger.db", dir.display());
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "storage: \"{url}\"\nproviders:\n  up: {{kind: openai, base_url: \"{}\"}}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n",
            mock.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("chat.yaml"),
        "name: chat\nmodel: {provider: up, name: gpt-4o-mini}\nlimits: {max_tokens: 100}\ntimeouts: {idle: 60s, total: 120s}\nbudget: {daily_usd: 1.0}\n",
    )
    .unwrap();
    let mut served = serve(&dir, &[], false);
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(&served.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = r#"{"input":"hi"}"#;
        write!(
            s,
            "POST /v1/pipelines/chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // Read until the first delta has arrived: the request is streaming.
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: delta") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended early");
            seen.extend_from_slice(&buf[..n]);
        }
        streams.push(s);
    }
    let status = Command::new("kill")
        .args(["-KILL", &served.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = served.child.wait();
    drop(streams);

    // The next start finds the three pending rows of the dead process.
    let again = serve(&dir, &[], false);
    let rows = rt.block_on(async {
        let ledger = sluice::ledger::Ledger::open(&url).await.unwrap();
        let rows = ledger.rows_since(0).await.unwrap();
        let day = sluice::ledger::money::utc_day(sluice::ledger::money::now_ms());
        let spend = ledger.spend("pipeline:chat", &day).await.unwrap();
        ledger.close().await;
        (rows, spend)
    });
    let (rows, spend) = rows;
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for r in &rows {
        assert_eq!(r.status, "interrupted");
        assert!(r.reserved_micros > 0);
        assert_eq!(
            r.cost_micros, r.reserved_micros,
            "an interrupted request counts its whole reservation"
        );
    }
    assert_eq!(spend.reserved_micros, 0);
    assert_eq!(
        spend.spent_micros,
        rows.iter().map(|r| r.reserved_micros).sum::<i64>()
    );
    println!(
        "sigkill: {} streams cut, {} rows interrupted, {} µ$ counted as spent",
        3,
        rows.len(),
        spend.spent_micros
    );
    drop(again);
}

/// What `cargo install --path engine` gives: a `sluice` that, started
/// anywhere, writes a pipelines directory with `init` and serves it from
/// another working directory, its ledger beside its settings.
#[test]
fn init_writes_a_directory_that_serves_from_any_working_directory() {
    let sluice = env!("CARGO_BIN_EXE_sluice");
    let home = tempdir();
    let out = Command::new(sluice)
        .args(["init", "mine"])
        .current_dir(&home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = home.join("mine");
    let served = serve(&dir, &[], false);
    let resp = post(
        &served.addr,
        "/v1/pipelines/demo",
        r#"{"input":"What is the weather?"}"#,
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("data: {\"text\":\" San\"}"), "{resp}");
    assert!(resp.contains("event: done"), "{resp}");
    drop(served);
    assert!(dir.join("data/sluice.db").is_file());
    // `sluice usage DIR`, from yet another directory, reads that ledger.
    let usage = Command::new(sluice)
        .args(["usage", dir.to_str().unwrap(), "--json"])
        .current_dir(tempdir())
        .output()
        .unwrap();
    assert!(usage.status.success(), "{usage:?}");
    let report: serde_json::Value = serde_json::from_slice(&usage.stdout).unwrap();
    assert_eq!(report["groups"][0]["key"], "demo", "{report}");
    assert_eq!(report["groups"][0]["requests"], 1, "{report}");
    // A second init leaves the directory alone.
    let again = Command::new(sluice)
        .args(["init", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("not overwriting") && stderr.contains("--force"),
        "{stderr}"
    );
}

/// `sluice keys new` prints a secret and an entry that, pasted under
/// `keys:`, declares a key that secret opens (and only its hash).
#[test]
fn keys_new_prints_a_secret_and_an_entry_to_paste() {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "new", "ci-bot", "--pipelines", "demo"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let secret = text
        .split_whitespace()
        .find(|w| w.starts_with(sluice::auth::SECRET_PREFIX))
        .expect("a secret");
    assert_eq!(secret.len(), sluice::auth::SECRET_PREFIX.len() + 64);
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("Paste this"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !entry.contains(&secret[10..]),
        "the entry holds the secret: {entry}"
    );
    let settings = (
        std::path::PathBuf::from("settings.yaml"),
        format!(
            "providers:\n  replay: {{kind: replay, fixtures: {}/fixtures/recorded}}\nkeys:\n{entry}",
            repo_root().display()
        ),
    );
    let pipeline = (
        std::path::PathBuf::from("demo.yaml"),
        "name: demo\nmodel: {provider: replay, name: openai/text_stop.sse}\nlimits: {max_tokens: 64}\n".to_string(),
    );
    let catalog = sluice::compile::compile_sources(&settings, &[pipeline])
        .unwrap_or_else(|d| panic!("{entry}\n{d:#?}"));
    let key = catalog
        .auth
        .identify(secret)
        .expect("the secret opens the key");
    assert_eq!(key.name, "ci-bot");
    assert!(key.may_call("demo") && !key.may_call("other"));
    // Two runs never give the same secret.
    let again = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["keys", "new", "ci-bot", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_ne!(v["secret"], secret);
    assert_eq!(
        v["hash"],
        sluice::auth::format_hash(&sluice::auth::digest(v["secret"].as_str().unwrap()))
    );
}

/// One HTTP/1.1 request with `headers`; returns the status and the body.
fn request(addr: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, String) {
    let response = raw::exchange(addr, method, path, headers, body);
    (raw::status(&response), raw::body(&response).to_string())
}

/// The deployment example as its container runs it: the binary started
/// from another directory, with only the pipelines directory (`deploy/
/// pipelines`, as shipped but for the provider's address and a real key)
/// and the environment; the ledger where `SLUICE_STORAGE` says, nothing
/// written beside the pipelines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploy_example_serves_from_its_mounted_directory() {
    let mock = MockProvider::start(Script::single(Reply::text(&["Hello", " team"])))
        .await
        .unwrap();
    let root = tempdir();
    let etc = root.join("etc-sluice");
    std::fs::create_dir_all(&etc).unwrap();
    for f in ["settings.yaml", "assistant.yaml"] {
        std::fs::copy(repo_root().join("deploy/pipelines").join(f), etc.join(f)).unwrap();
    }
    let keys = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "keys",
            "new",
            "support-bot",
            "--team",
            "support",
            "--pipelines",
            "assistant",
            "--json",
        ])
        .output()
        .unwrap();
    let key: serde_json::Value = serde_json::from_slice(&keys.stdout).unwrap();
    let settings = std::fs::read_to_string(etc.join("settings.yaml")).unwrap();
    let placeholder = format!("sha256:{}", "0".repeat(64));
    assert!(settings.contains(&placeholder));
    let settings = settings
        .replace(&placeholder, key["hash"].as_str().unwrap())
        .replace("https://api.openai.com/v1", &mock.base_url());
    std::fs::write(etc.join("settings.yaml"), settings).unwrap();
    let shipped: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let ledger = root.join("state/sluice.db");
    let storage = format!("sqlite:{}", ledger.display());
    let served = serve(
        &etc,
        &[
            ("SLUICE_STORAGE", storage.as_str()),
            ("OPENAI_API_KEY", "sk-deploy-test-0123456789"),
            ("ANTHROPIC_API_KEY", "sk-ant-deploy-test-0123456789"),
        ],
        false,
    );
    let addr = served.addr.clone();
    let secret = key["secret"].as_str().unwrap().to_string();
    let outcome = tokio::task::spawn_blocking(move || {
        assert_eq!(request(&addr, "GET", "/healthz", &[], "").0, 200);
        let (status, body) = request(&addr, "GET", "/readyz", &[], "");
        assert_eq!(status, 200, "{body}");
        let ask = r#"{"input":"hi","stream":false}"#;
        assert_eq!(
            request(&addr, "POST", "/v1/pipelines/assistant", &[], ask).0,
            401
        );
        request(
            &addr,
            "POST",
            "/v1/pipelines/assistant",
            &[&format!("Authorization: Bearer {secret}")],
            ask,
        )
    })
    .await
    .unwrap();
    assert_eq!(outcome.0, 200, "{}", outcome.1);
    assert!(outcome.1.contains("Hello team"), "{}", outcome.1);
    assert_eq!(mock.journal().requests()[0].body["model"], "gpt-4o-mini");
    assert!(ledger.exists(), "the ledger is where SLUICE_STORAGE says");
    let now: Vec<_> = std::fs::read_dir(&etc)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(now, shipped, "nothing is written beside the pipelines");
    drop(served);
    let _ = std::fs::remove_dir_all(root);
}

/// What `sluice serve DIR` logs up to its "serving" line.
fn startup_log(dir: &std::path::Path) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .current_dir(tempdir())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("SLUICE_LOG")
        .spawn()
        .expect("sluice starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice logs that it is serving");
        let serving = line.contains("serving");
        lines.push(line);
        if serving {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn a_ledger_in_the_watched_directory_is_warned_about_and_a_subdirectory_is_not() {
    let warning = "the ledger is in the pipelines directory itself";
    for (storage, warned) in [("sqlite:ledger.db", true), ("sqlite:data/ledger.db", false)] {
        let dir = tempdir();
        std::fs::write(
            dir.join("settings.yaml"),
            format!(
                "storage: {storage}\nproviders:\n  replay: {{kind: replay, fixtures: {}/fixtures/recorded}}\n",
                repo_root().display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("demo.yaml"),
            "name: demo\nmodel: {provider: replay, name: openai/text_stop.sse}\nlimits: {max_tokens: 64}\n",
        )
        .unwrap();
        let log = startup_log(&dir);
        assert_eq!(
            log.iter().any(|l| l.contains(warning)),
            warned,
            "storage {storage}: {log:#?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
