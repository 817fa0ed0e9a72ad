//! The `sluice bench` binary, on the real clock.

use super::*;

/// The binary on Ctrl-C (SIGINT): the report of what ended is printed and
/// written, and the exit status is 130.
#[test]
fn ctrl_c_writes_the_report_so_far() {
    let rt = real_runtime();
    let mock = rt
        .block_on(MockProvider::start(Script::single(
            Reply::text(&["x", "y"]).pace(ms(20)),
        )))
        .unwrap();
    let json = std::env::temp_dir().join(format!("sluice-bench-int-{}.json", std::process::id()));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", &format!("{}/chat/completions", mock.base_url())])
        .args([
            "--model",
            "m",
            "-n",
            "100000",
            "--prompt-tokens",
            "4",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once a few answers have ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rt.block_on(async { mock.journal().requests().len() }) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no request reached the mock"
        );
        std::thread::sleep(ms(20));
    }
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let step = &report["steps"][0];
    assert_eq!(step["interrupted"], true);
    assert!(step["ok"].as_u64().unwrap() >= 3, "{step}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("in flight abandoned"));
    let _ = std::fs::remove_file(&json);
}

/// The binary: a run with `--json`, read back by `compare`.
#[test]
fn binary_writes_a_report_that_compare_reads() {
    let rt = real_runtime();
    let mock = rt
        .block_on(MockProvider::start(Script::single(Reply::text(&[
            "x", "y",
        ]))))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let run = |out: &std::path::Path, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["bench", &format!("{}/chat/completions", mock.base_url())])
            .args([
                "--model",
                "m",
                "-n",
                "6",
                "-c",
                "2",
                "--prompt-tokens",
                "8",
                "--quiet",
            ])
            .args(["--slo", "e2e=10s", "--json"])
            .arg(out)
            .args(extra)
            .env("OPENAI_API_KEY", "sk-from-env-0123456789");
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = run(&a, &[]);
    assert!(
        table.contains("concurrency 2: 6 sent, 6 ok, 0 failed"),
        "{table}"
    );
    assert!(
        table.contains("TTFT ms") && table.contains("counted by server usage"),
        "{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    assert_eq!(report["schema"], "sluice-bench/1");
    assert_eq!(report["config"]["api"], "chat");
    assert_eq!(report["steps"][0]["ok"], 6);
    assert_eq!(report["steps"][0]["good"], 6);
    assert!(report["steps"][0]["ttft_ms"]["p99"].is_number());
    assert!(!report.to_string().contains("sk-from-env"));
    let key = rt.block_on(async {
        mock.journal().requests()[0]
            .header("authorization")
            .map(str::to_owned)
    });
    assert_eq!(key.as_deref(), Some("Bearer sk-from-env-0123456789"));

    let b = dir.join("b.json");
    let page = dir.join("b.html");
    run(
        &b,
        &[
            "--output-tokens",
            "4",
            "--ramp",
            "20ms",
            "--html",
            page.to_str().unwrap(),
        ],
    );
    let report_b: Value = serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    assert_eq!(report_b["config"]["ramp_s"], 0.02);
    assert!(report["config"].get("ramp_s").is_none());
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<svg") && html.contains("TTFT distribution"),
        "{html}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "compare"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("concurrency 2") && out.contains("B/A"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("ok") && l.trim_end().ends_with("1.000")),
        "{out}"
    );

    // --via: a second mock as the gateway, in two rounds per side.
    let gateway = rt
        .block_on(MockProvider::start(Script::single(Reply::text(&[
            "x", "y",
        ]))))
        .unwrap();
    let c = dir.join("c.json");
    let via_page = dir.join("c.html");
    let table = run(
        &c,
        &[
            "--via",
            &format!("gw={}/chat/completions", gateway.base_url()),
            "--via-model",
            "gw-model",
            "--rounds",
            "2",
            "--html",
            via_page.to_str().unwrap(),
        ],
    );
    assert!(
        table.contains("gw: through http://127.0.0.1:") && table.contains("added by gw"),
        "{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
    assert_eq!(report["steps"][0]["ok"], 6);
    assert_eq!(report["via"][0]["steps"][0]["ok"], 6);
    assert_eq!(report["via"][0]["rounds"], 2);
    assert_eq!(report["via"][0]["model"], "gw-model");
    assert_eq!(report["via"][0]["name"], "gw");
    assert!(report["via"][0]["added"][0]["ttft_p50_ms"].is_number());
    let html = std::fs::read_to_string(&via_page).unwrap();
    assert!(
        html.contains("Added by gw") && html.contains("gw concurrency 2"),
        "{html}"
    );
    let gw_models: Vec<String> = rt.block_on(async {
        gateway
            .journal()
            .requests()
            .iter()
            .map(|r| r.body["model"].as_str().unwrap_or_default().to_owned())
            .collect()
    });
    assert_eq!(gw_models, vec!["gw-model"; 6]);

    // Usage errors exit 2 and say what is wrong.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "http://127.0.0.1:1/v1/chat/completions",
            "--slo",
            "speed=1s",
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown SLO \"speed\""));
    for (vias, error) in [
        (
            [
                "a=http://127.0.0.1:1/v1/chat/completions",
                "a=http://127.0.0.1:2/v1/chat/completions",
            ],
            "two paths are named \"a\"",
        ),
        (
            [
                "b c=http://127.0.0.1:1/v1/chat/completions",
                "http://127.0.0.1:2/v1/chat/completions",
            ],
            "invalid --via name \"b c\"",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "bench",
                "http://127.0.0.1:1/v1/chat/completions",
                "--model",
                "m",
            ])
            .args(["--via", vias[0], "--via", vias[1]])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(error), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
