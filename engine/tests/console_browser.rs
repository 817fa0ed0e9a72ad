//! The console's page in a real browser: headless Chromium opens
//! `/console` after a scripted series of requests (one answered, one timed
//! out, one refused by a budget) on a SQLite ledger, and
//! - the overview draws today's totals, the budget's bar (coloured by its
//!   alert thresholds, with the percentage the ledger gives) and the alert
//!   sent, the same numbers `/v1/overview` answers;
//! - the spend page's table holds, per pipeline, the numbers `sluice usage
//!   --by pipeline --since 30d --json` prints for the same ledger;
//! - the requests page lists the requests newest first, and a filter in
//!   its address (`#requests?pipeline=slow`) narrows it to the matching
//!   ones, as `/v1/requests` with that filter answers.
//!
//! Screenshots are saved as `target/tmp/console-overview.png`,
//! `console-spend.png` and `console-requests.png`.
//!
//! Needs `SLUICE_TEST_CHROMIUM` (a Chromium binary, e.g.
//! `/usr/bin/chromium` from Debian's `chromium` package); skipped, saying
//! so, without it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::sdk::env_or_skip;
use common::*;
use serde_json::Value;
use sluice::serve::RunningServer;

/// What the page shows for an amount of micro-dollars (`Intl` en-US
/// currency, 2 to 6 decimals).
fn money(micros: i64) -> String {
    let s = format!("{:.6}", micros as f64 / 1e6);
    let trimmed = s.trim_end_matches('0');
    let decimals = trimmed.split('.').nth(1).map_or(0, str::len);
    if decimals < 2 {
        format!("${:.2}", micros as f64 / 1e6)
    } else {
        format!("${trimmed}")
    }
}

/// Runs Chromium on `url` with `args`; its stdout.
fn chromium(bin: &str, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            // Virtual time runs until the page's fetches are done and
            // drawn (the page polls every 5 s: one poll, then this ends).
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
    assert!(out.status.success(), "chromium failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` in a DOM dump.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"))
        + open.len();
    &dom[start..start + dom[start..].find('<').unwrap()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_draws_what_the_ledger_holds() {
    let Some(bin) = env_or_skip(
        "SLUICE_TEST_CHROMIUM",
        "the console's browser test",
        "a Chromium binary such as /usr/bin/chromium",
    ) else {
        return;
    };
    let mock = console::mock().await;
    let (dir, db) = console::temp_db("page");
    let server = RunningServer::start(
        console::catalog(&mock, &db, ""),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let addr = server.addr;
    console::series(&server).await;
    let overview = call_with(addr, "/v1/overview", &[], None).await.2;
    assert_eq!(overview["requests"], 3, "{overview}");
    assert_eq!(overview["errors"], 2, "{overview}");

    let profile = std::env::temp_dir().join(format!("sluice-console-chromium-{}", pg::uuid_like()));
    std::fs::create_dir_all(&profile).unwrap();
    let url = format!("http://{addr}/console");
    let (bin2, profile2, url2) = (bin.clone(), profile.clone(), url.clone());
    let dom =
        tokio::task::spawn_blocking(move || chromium(&bin2, &profile2, &url2, &["--dump-dom"]))
            .await
            .unwrap();
    assert_eq!(text_of(&dom, "requests"), "3");
    assert_eq!(text_of(&dom, "errors"), "2");
    let cost = overview["cost_micros"].as_i64().unwrap();
    assert!(cost > 0);
    assert_eq!(text_of(&dom, "cost"), money(cost));
    assert_eq!(text_of(&dom, "streaming"), "0");
    assert!(text_of(&dom, "day").starts_with(overview["day"].as_str().unwrap()));
    // The chat budget: its percentage from the ledger, amber past its
    // first threshold (1%) and short of its last (90%).
    let chat = overview["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["scope"] == "pipeline:chat")
        .unwrap();
    let pct = chat["used_ppm"].as_f64().unwrap() / 10_000.0;
    assert!((1.0..90.0).contains(&pct), "{chat}");
    let row = &dom[dom
        .find("data-scope=\"pipeline:chat\"")
        .expect("the chat budget's row")..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains("class=\"bar warn\""), "{row}");
    let shown = format!("{:.*}%", if pct < 10.0 { 2 } else { 1 }, pct);
    assert!(row.contains(&format!(">{shown}<")), "{shown} in {row}");
    assert!(
        row.contains(&money(chat["spent_micros"].as_i64().unwrap())),
        "{row}"
    );
    assert!(dom.contains("pipeline:chat passed 1%"), "the alert:\n{dom}");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-overview.png");
    let _ = std::fs::remove_file(&shot);
    let arg = format!("--screenshot={}", shot.display());
    let (bin3, profile3) = (bin.clone(), profile.clone());
    tokio::task::spawn_blocking(move || {
        chromium(&bin3, &profile3, &url, &[&arg, "--window-size=1280,820"])
    })
    .await
    .unwrap();
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "{}",
        shot.display()
    );
    println!("screenshot: {}", shot.display());

    // Spend: the table of the last 30 days by pipeline, against `sluice
    // usage` on the same ledger.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "usage",
            dir.to_str().unwrap(),
            "--by",
            "pipeline",
            "--since",
            "30d",
            "--json",
        ])
        .arg("--storage")
        .arg(format!("sqlite:{db}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage: Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = usage
        .as_array()
        .or_else(|| usage["groups"].as_array())
        .expect("groups");
    assert_eq!(groups.len(), 3, "{usage}");
    let spend_url = format!("http://{addr}/console#spend");
    let (bin2, profile2) = (bin.clone(), profile.clone());
    let url2 = spend_url.clone();
    let dom =
        tokio::task::spawn_blocking(move || chromium(&bin2, &profile2, &url2, &["--dump-dom"]))
            .await
            .unwrap();
    let int = |v: &Value| {
        // en-US grouping, as the page's Intl.NumberFormat writes it.
        let digits = v.as_i64().unwrap().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    for g in groups {
        let key = g["key"].as_str().unwrap();
        let at = dom
            .find(&format!("data-group=\"{key}\""))
            .unwrap_or_else(|| panic!("no row for {key}:\n{dom}"));
        let row = &dom[at..at + dom[at..].find("</tr>").unwrap()];
        let cells: Vec<&str> = row
            .split("<td class=\"num\">")
            .skip(1)
            .map(|c| &c[..c.find('<').unwrap()])
            .collect();
        let expected = [
            int(&g["requests"]),
            int(&g["errors"]),
            int(&g["prompt_tokens"]),
            int(&g["completion_tokens"]),
            money(g["cost_micros"].as_i64().unwrap()),
        ];
        assert_eq!(cells, expected, "{key}: {row}");
    }
    let total: i64 = groups.iter().map(|g| g["requests"].as_i64().unwrap()).sum();
    assert_eq!(text_of(&dom, "spend-requests"), total.to_string());
    let spend_shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-spend.png");
    let _ = std::fs::remove_file(&spend_shot);
    let arg = format!("--screenshot={}", spend_shot.display());
    let (bin3, profile3) = (bin.clone(), profile.clone());
    tokio::task::spawn_blocking(move || {
        chromium(
            &bin3,
            &profile3,
            &spend_url,
            &[&arg, "--window-size=1280,820"],
        )
    })
    .await
    .unwrap();
    assert!(std::fs::metadata(&spend_shot).is_ok_and(|m| m.len() > 10_000));
    println!("screenshot: {}", spend_shot.display());

    // Requests: newest first, and narrowed by a filter.
    let ids_in = |dom: &str| -> Vec<String> {
        dom.split("data-request-id=\"")
            .skip(1)
            .map(|r| r[..r.find('"').unwrap()].to_string())
            .collect()
    };
    for (filter, expected) in [
        ("", 3),
        ("?pipeline=slow", 1),
        ("?status=budget_rejected", 1),
    ] {
        let (_, _, api) = call_with(addr, &format!("/v1/requests{filter}"), &[], None).await;
        let want: Vec<String> = api["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["request_id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(want.len(), expected, "{filter}: {api}");
        let url = format!("http://{addr}/console#requests{filter}");
        let (bin2, profile2) = (bin.clone(), profile.clone());
        let dom =
            tokio::task::spawn_blocking(move || chromium(&bin2, &profile2, &url, &["--dump-dom"]))
                .await
                .unwrap();
        assert_eq!(ids_in(&dom), want, "{filter}");
    }
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-requests.png");
    let arg = format!("--screenshot={}", shot.display());
    let url = format!("http://{addr}/console#requests");
    tokio::task::spawn_blocking(move || {
        chromium(&bin, &profile, &url, &[&arg, "--window-size=1280,820"])
    })
    .await
    .unwrap();
    println!("screenshot: {}", shot.display());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
