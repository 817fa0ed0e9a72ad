//! The console's JSON endpoints on a ledger of a million rows: seeds a
//! SQLite ledger (and a Postgres one when `SLUICE_BENCH_POSTGRES_URL`
//! names a server) with 1,000,000 requests over 90 days, serves it with
//! `sluice serve`'s server, and times each endpoint over HTTP.
//!
//! ```text
//! cargo run --release -p sluice-benches --bin console -- [--rows N] [--runs N]
//! ```
//!
//! The rows: 8 pipelines, 5 models, 20 keys in 4 teams, one request in 97
//! timed out and one in 89 refused by a budget, started evenly over the
//! last 90 days (so today holds about 11,000). Each endpoint is asked
//! `--runs` times (default 20) after one warm-up call; the table shows the
//! median and the slowest, in milliseconds, as a client on the same
//! machine saw them (loopback HTTP/1.1, a new connection per call).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sluice::compile::compile_sources;
use sluice::ledger::Ledger;
use sluice::serve::RunningServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY_MS: i64 = 86_400_000;
const SPAN_DAYS: i64 = 90;

struct Args {
    rows: i64,
    runs: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        rows: 1_000_000,
        runs: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--rows" => a.rows = value()?.parse().map_err(|e| format!("--rows: {e}"))?,
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "-h" | "--help" => {
                println!("usage: console [--rows N] [--runs N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.rows = a.rows.max(1);
    a.runs = a.runs.max(1);
    Ok(a)
}

/// The columns every seeded row sets, as SQL over `i` (0..rows) and
/// `start` (its start, unix ms); `day` and `team` per dialect.
fn seeded_columns(day: &str) -> String {
    format!(
        "'seed-' || i, 'seed', start, start + 900, {day}, \
         'pipeline-' || (i % 8), 'openai', 'model-' || (i % 5), \
         CASE WHEN i % 97 = 0 THEN 'timeout' WHEN i % 89 = 0 THEN 'budget_rejected' ELSE 'ok' END, \
         120 + i % 300, 40 + i % 200, 0, 2000, 150 + i % 700, \
         CASE WHEN i % 89 = 0 THEN NULL ELSE 80 + i % 400 END, 900, 0, \
         CASE WHEN i % 97 = 0 THEN 'timeout.idle' WHEN i % 89 = 0 THEN 'budget_exhausted' END, \
         'global', 'req-' || i, 'key-' || (i % 20), 'team-' || (i % 4)"
    )
}

const COLUMNS: &str = "id, instance, started_at_ms, ended_at_ms, day, pipeline, provider, model, \
     status, prompt_tokens, completion_tokens, estimated, reserved_micros, cost_micros, ttft_ms, \
     duration_ms, tool_calls, error_code, budget_scopes, request_id, api_key, team";

fn seed_sqlite(path: &str, rows: i64, now: i64) -> Result<(), String> {
    let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    let first = now - SPAN_DAYS * DAY_MS;
    let step = (SPAN_DAYS * DAY_MS) / rows;
    let sql = format!(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {last}), \
         s(i, start) AS (SELECT i, {first} + i * {step} FROM n) \
         INSERT INTO requests ({COLUMNS}) SELECT {cols} FROM s",
        last = rows - 1,
        cols = seeded_columns("strftime('%Y-%m-%d', start / 1000, 'unixepoch')"),
    );
    c.execute_batch(&format!("BEGIN; {sql}; COMMIT; ANALYZE;"))
        .map_err(|e| e.to_string())
}

async fn seed_postgres(url: &str, rows: i64, now: i64) -> Result<(), String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let first = now - SPAN_DAYS * DAY_MS;
    let step = (SPAN_DAYS * DAY_MS) / rows;
    let sql = format!(
        "INSERT INTO requests ({COLUMNS}) SELECT {cols} FROM \
         (SELECT i, {first}::bigint + i * {step} AS start FROM generate_series(0::bigint, {last}) AS i) s",
        last = rows - 1,
        cols = seeded_columns(
            "to_char(to_timestamp(start / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        ),
    );
    // What autovacuum does in a running database: the seeding's million
    // trigger updates leave as many dead versions of usage_days' rows.
    for q in [sql.as_str(), "VACUUM ANALYZE"] {
        sqlx::query(sqlx::AssertSqlSafe(q.to_string()))
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One GET on a new connection: the status line, the body and how long
/// the whole answer took.
async fn get(addr: SocketAddr, path: &str) -> Result<(String, String, Duration), String> {
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string(), took))
}

const ENDPOINTS: &[&str] = &[
    "/v1/overview",
    "/v1/budgets",
    "/v1/usage?days=30&by=pipeline",
    "/v1/usage?days=90&by=model",
    "/v1/usage?days=90&by=key",
    "/v1/requests?limit=50",
    "/v1/requests?limit=50&pipeline=pipeline-3",
    "/v1/requests?limit=50&status=timeout",
    "/v1/requests?limit=50&pipeline=pipeline-3&model=model-2&status=ok",
    "/v1/requests?limit=50&before=PAGE",
    "/v1/requests/REQ",
];

async fn bench(storage: &str, label: &str, rows: i64, runs: usize) -> Result<(), String> {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: \"{storage}\"\nproviders:\n  mock: {{kind: openai, base_url: \"http://127.0.0.1:9/v1\"}}\n\
             prices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\nbudgets:\n  global: {{daily_usd: 500, alert_at: [0.5, 0.9]}}\n"
        ),
    );
    let pipelines: Vec<(PathBuf, String)> = (0..8)
        .map(|p| {
            (
                PathBuf::from(format!("pipeline-{p}.yaml")),
                format!(
                    "name: pipeline-{p}\nmodel: {{provider: mock, name: gpt-4o-mini}}\nlimits: {{max_tokens: 500}}\nbudget: {{daily_usd: 50}}\n"
                ),
            )
        })
        .collect();
    let catalog = compile_sources(&settings, &pipelines).map_err(|d| format!("{d:#?}"))?;
    let server = RunningServer::start(catalog, "127.0.0.1:0".parse().map_err(|_| "addr")?)
        .await
        .map_err(|e| e.to_string())?;
    let addr = server.addr;
    // A cursor 500 rows into the listing.
    let (_, body, _) = get(addr, "/v1/requests?limit=500").await?;
    let listing: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    let page = listing["next"].as_str().unwrap_or_default().to_string();
    println!("\n{label}: median / slowest of {runs} calls, ms");
    for path in ENDPOINTS {
        // A request from the middle of the ledger.
        let path = path
            .replace("PAGE", &page)
            .replace("REQ", &format!("req-{}", rows / 2));
        let (status, _, _) = get(addr, &path).await?;
        if !status.contains(" 200") {
            return Err(format!("{path}: {status}"));
        }
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            times.push(get(addr, &path).await?.2);
        }
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "  {:<70} {:>8.2} {:>8.2}",
            path.split("&before=").next().unwrap_or(&path).to_string()
                + if path.contains("before=") {
                    "&before=…"
                } else {
                    ""
                },
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
    server.stop().await;
    Ok(())
}

async fn run(a: &Args) -> Result<(), String> {
    let now = sluice::ledger::money::now_ms();
    let dir = std::env::temp_dir().join(format!("sluice-console-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = dir.join("ledger.db");
    let url = format!("sqlite:{}", db.display());
    // The schema, then the rows.
    Ledger::open(&url)
        .await
        .map_err(|e| e.to_string())?
        .close()
        .await;
    let t = Instant::now();
    let path = db.display().to_string();
    let rows = a.rows;
    tokio::task::spawn_blocking(move || seed_sqlite(&path, rows, now))
        .await
        .map_err(|e| e.to_string())??;
    println!(
        "SQLite: seeded {} rows in {:.1} s ({:.0} MB)",
        a.rows,
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    let result = bench(&url, "SQLite", a.rows, a.runs).await;
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    if let Ok(admin) = std::env::var("SLUICE_BENCH_POSTGRES_URL") {
        use sqlx::Connection;
        let name = format!("sluice_console_bench_{}", std::process::id());
        let mut c = sqlx::PgConnection::connect(&admin)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut c)
            .await
            .map_err(|e| e.to_string())?;
        let (base, _) = admin.rsplit_once('/').ok_or("the URL names no database")?;
        let url = format!("{base}/{name}");
        let outcome = async {
            Ledger::open(&url)
                .await
                .map_err(|e| e.to_string())?
                .close()
                .await;
            let t = Instant::now();
            seed_postgres(&url, a.rows, now).await?;
            println!(
                "\nPostgres: seeded {} rows in {:.1} s",
                a.rows,
                t.elapsed().as_secs_f64()
            );
            bench(&url, "Postgres", a.rows, a.runs).await
        }
        .await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut c)
        .await;
        outcome?;
    } else {
        println!("\nPostgres: not run (set SLUICE_BENCH_POSTGRES_URL to a server's URL)");
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("console: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("console: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("console: {e}");
            ExitCode::FAILURE
        }
    }
}
