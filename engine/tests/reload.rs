//! Reloading without a restart, black-box: a good configuration is
//! swapped in for the requests that come next while open streams finish
//! on theirs; a broken one is never served and is reported; a revoked key
//! is refused from its next request; under 500 open streams and 20
//! reloads nothing fails and every request is served by exactly one
//! version. Then the real binary: a changed file and SIGHUP reload it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice::compile::{Catalog, compile_sources};
use sluice::config::{Diagnostic, Pos};
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

/// A key's secret and its entry: every pipeline, and the metrics.
fn key(name: &str) -> (String, String) {
    let k = api_key(name, ", pipelines: [\"*\"], metrics: true");
    (k.secret, k.entry)
}

/// Version `v` of the configuration: pipeline `chat` calls model `m{v}`,
/// and `keys` are declared.
fn version(mock: &MockProvider, v: u32, keys: &[&str]) -> Catalog {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver: {{shutdown_grace: 5s}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nkeys:\n{}",
            mock.base_url(),
            keys.concat()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: mock, name: m{v}}}\nlimits: {{max_tokens: 100}}\ntimeouts: {{first_token: 30s, idle: 30s, total: 60s}}\n"
        ),
    );
    compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"))
}

fn broken() -> Vec<Diagnostic> {
    vec![Diagnostic::error(
        Path::new("chat.yaml"),
        Pos { line: 3, col: 9 },
        "max_tokens must be a whole number between 1 and 4294967295, found 0",
    )]
}

fn request(path: &str, secret: &str, body: Option<&str>) -> Request<Full<Bytes>> {
    Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(path)
        .header("host", "sluice.test")
        .header("content-type", "application/json")
        .header("x-api-key", secret)
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap()
}

/// Status, `x-sluice-config` and body of one request.
async fn call(
    addr: SocketAddr,
    path: &str,
    secret: &str,
    body: Option<&str>,
) -> (StatusCode, u64, String) {
    let resp = send(addr, request(path, secret, body)).await;
    let status = resp.status();
    let version = resp.headers()["x-sluice-config"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        version,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn a_good_configuration_is_swapped_in_a_broken_one_is_reported_and_never_served() {
    // Each answer takes a second: a stream is open across the reload.
    let mock = MockProvider::start(Script::single(
        Reply::text(&["a", "b", "c", "d", "e"]).pace(Duration::from_millis(200)),
    ))
    .await
    .unwrap();
    let (old_secret, old) = key("old");
    let (new_secret, new) = key("new");
    let server = RunningServer::start(version(&mock, 1, &[&old]), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.addr;
    let reload = server.reload_handle();
    let open = tokio::spawn({
        let s = old_secret.clone();
        async move { call(addr, "/v1/pipelines/chat", &s, Some(r#"{"input":"x"}"#)).await }
    });
    // The stream has reached the provider before the reload.
    while mock.journal().request_count() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(reload.apply(Ok(version(&mock, 2, &[&new]))), 2);
    // The revoked key is refused from its next request; the new one works
    // on the new pipeline.
    let (status, v, _) = call(addr, "/v1/pipelines/chat", &old_secret, Some("{}")).await;
    assert_eq!((status, v), (StatusCode::UNAUTHORIZED, 2));
    let (status, v, body) = call(
        addr,
        "/v1/pipelines/chat",
        &new_secret,
        Some(r#"{"input":"y","stream":false}"#),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, 2), "{body}");
    // The open stream finished, whole, on the configuration it started on.
    let (status, v, body) = open.await.unwrap();
    assert_eq!((status, v), (StatusCode::OK, 1));
    assert!(body.contains("\"finish_reason\":\"stop\""), "{body}");
    let models: Vec<String> = mock
        .journal()
        .requests()
        .iter()
        .map(|r| r.body["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, ["m1", "m2"]);
    // A broken configuration: still version 2, and it says why.
    assert_eq!(reload.apply(Err(broken())), 2);
    let (status, v, body) = call(addr, "/v1/config", &new_secret, None).await;
    assert_eq!((status, v), (StatusCode::OK, 2));
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["version"], 2);
    assert_eq!(report["last_reload"]["ok"], false);
    assert_eq!(
        report["last_reload"]["diagnostics"][0],
        "chat.yaml:3:9: error: max_tokens must be a whole number between 1 and 4294967295, found 0"
    );
    let (status, v, _) = call(
        addr,
        "/v1/pipelines/chat",
        &new_secret,
        Some(r#"{"input":"z","stream":false}"#),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, 2));
    // Revoking every key of a server that listens beyond loopback would
    // open it: not here (loopback), so it is allowed.
    let (_, _, metrics) = call(addr, "/metrics", &new_secret, None).await;
    assert!(
        metrics.contains("sluice_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_config_version 2"), "{metrics}");
    server.stop().await;
}

/// Writes version `v` of the configuration into `dir` as files (a broken
/// one when `broken`: a pipeline with `max_tokens: 0`), and compiles the
/// directory as a reload does.
fn files(
    dir: &Path,
    mock: &MockProvider,
    v: u32,
    keys: &[&str],
    broken: bool,
) -> Result<Catalog, Vec<Diagnostic>> {
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "storage: memory\nserver: {{shutdown_grace: 5s}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nkeys:\n{}",
            mock.base_url(),
            keys.concat()
        ),
    )
    .unwrap();
    let max_tokens = if broken { 0 } else { 100 };
    std::fs::write(
        dir.join("chat.yaml"),
        format!(
            "name: chat\nmodel: {{provider: mock, name: m{v}}}\nlimits: {{max_tokens: {max_tokens}}}\ntimeouts: {{first_token: 30s, idle: 30s, total: 60s}}\n"
        ),
    )
    .unwrap();
    sluice::compile::load_dir(dir)
}

/// 500 streams open while the pipelines directory is rewritten and
/// reloaded 20 times, good and broken files in turn: every stream ends
/// whole, each request was served by exactly one version (the model its
/// provider call named is that version's), no broken version was ever
/// served (a broken one names a model, `m100` and up, that no request
/// saw), and the key the last version revokes is refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_open_streams_survive_twenty_reloads() {
    let mock = MockProvider::start(Script::single(
        Reply::text(&["one", " two", " three", " four"]).pace(Duration::from_millis(150)),
    ))
    .await
    .unwrap();
    let (keep_secret, keep) = key("keep");
    let (gone_secret, gone) = key("gone");
    let server = RunningServer::start(
        version(&mock, 1, &[&keep, &gone]),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr = server.addr;
    let reload = server.reload_handle();
    let mut clients = Vec::new();
    for i in 0..500 {
        let secret = keep_secret.clone();
        clients.push(tokio::spawn(async move {
            // Spread over the reloads.
            tokio::time::sleep(Duration::from_millis(i as u64 * 2)).await;
            let body = format!(r#"{{"input":"req-{i}"}}"#);
            let got = call(addr, "/v1/pipelines/chat", &secret, Some(&body)).await;
            (i, got)
        }));
    }
    let dir = std::env::temp_dir().join(format!(
        "sluice-reload500-{}-{}",
        std::process::id(),
        sluice::ledger::money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut good = 1;
    for n in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if n % 2 == 0 {
            good += 1;
            // The last good version revokes `gone`.
            let keys: Vec<&str> = if n == 18 {
                vec![&keep]
            } else {
                vec![&keep, &gone]
            };
            let compiled = files(&dir, &mock, good, &keys, false);
            assert!(compiled.is_ok(), "{:?}", compiled.err());
            assert_eq!(reload.apply(compiled), u64::from(good));
        } else {
            // A broken file, whose model (`m100`+) no request may name.
            let compiled = files(&dir, &mock, 100 + n, &[&keep, &gone], true);
            assert!(compiled.is_err());
            assert_eq!(reload.apply(compiled), u64::from(good));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(good, 11);
    let mut served: HashMap<u64, usize> = HashMap::new();
    let mut version_of = HashMap::new();
    for c in clients {
        let (i, (status, v, body)) = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("every stream ends")
            .unwrap();
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert!(body.contains("event: done"), "request {i}: {body}");
        assert!(!body.contains("event: error"), "request {i}: {body}");
        assert!((1..=11).contains(&v), "request {i} served by version {v}");
        *served.entry(v).or_default() += 1;
        version_of.insert(format!("req-{i}"), v);
    }
    // Each request's provider call named its version's model.
    for r in mock.journal().requests() {
        let input = r.body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let model = r.body["model"].as_str().unwrap();
        assert_eq!(model, format!("m{}", version_of[&input]), "{input}");
    }
    assert_eq!(mock.journal().request_count(), 500);
    println!("500 streams over 20 reloads, served by version: {served:?}");
    assert!(
        served.len() > 3,
        "the reloads did not overlap the streams: {served:?}"
    );
    let (status, v, _) = call(addr, "/v1/pipelines/chat", &gone_secret, Some("{}")).await;
    assert_eq!((status, v), (StatusCode::UNAUTHORIZED, 11));
    server.stop().await;
}

/// `sluice serve` itself: a file written into its directory, a broken
/// one, one removed and a SIGHUP each compile the directory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_a_changed_file_and_on_sighup() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mock = MockProvider::start(Script::single(Reply::text(&["ok"])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!(
        "sluice-reload-{}-{}",
        std::process::id(),
        sluice::ledger::money::now_ms()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = |name: &str, max_tokens: u32| {
        format!(
            "name: {name}\nmodel: {{provider: mock, name: m}}\nlimits: {{max_tokens: {max_tokens}}}\n"
        )
    };
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "storage: \"sqlite:{}/ledger.db\"\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\n",
            dir.display(),
            mock.base_url()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("chat.yaml"), pipeline("chat", 50)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("SLUICE_LOG")
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let pid = child.id();
    let _guard = Kill(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice starts");
        if let Some(i) = line.find("127.0.0.1:") {
            let rest = &line[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            break rest[..end].parse().unwrap();
        }
    };
    // The report once `done` says so, polled for at most 20 s.
    let wait_for = |done: fn(&serde_json::Value) -> bool| async move {
        let mut last = (StatusCode::OK, String::new());
        for _ in 0..400 {
            let (status, _, body) = call(addr, "/v1/config", "", None).await;
            let report: serde_json::Value = serde_json::from_str(&body).unwrap();
            if done(&report) {
                return report;
            }
            last = (status, body);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What the server said last, to tell a reload that never came
        // from one that came twice.
        panic!("the reload did not happen; /v1/config said {last:?}");
    };
    assert_eq!(
        wait_for(|r| r["version"] == 1).await["pipelines"],
        serde_json::json!(["chat"])
    );
    std::fs::write(dir.join("second.yaml"), pipeline("second", 50)).unwrap();
    let r = wait_for(|r| r["version"] == 2).await;
    assert_eq!(r["pipelines"], serde_json::json!(["chat", "second"]));
    std::fs::write(dir.join("third.yaml"), pipeline("third", 0)).unwrap();
    let r = wait_for(|r| r["last_reload"]["ok"] == false).await;
    assert_eq!(r["version"], 2);
    let diag = r["last_reload"]["diagnostics"][0].as_str().unwrap();
    assert!(
        diag.ends_with("third.yaml:3:22: error: max_tokens must be a whole number between 1 and 4294967295, found 0"),
        "{diag}"
    );
    let (status, v, _) = call(
        addr,
        "/v1/pipelines/second",
        "",
        Some(r#"{"input":"hi","stream":false}"#),
    )
    .await;
    assert_eq!((status, v), (StatusCode::OK, 2));
    std::fs::remove_file(dir.join("third.yaml")).unwrap();
    wait_for(|r| r["version"] == 3).await;
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let r = wait_for(|r| r["version"] == 4).await;
    assert_eq!(r["last_reload"]["ok"], true);
    // A file that is not configuration (a tool database beside it) changes
    // nothing: a second passes, three times the settling delay.
    std::fs::write(dir.join("shop.db-wal"), b"not yaml").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, v, _) = call(addr, "/v1/config", "", None).await;
    assert_eq!(v, 4);
    let _ = std::fs::remove_dir_all(dir);
}
