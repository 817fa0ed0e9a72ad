//! The `sluice` command line: argument parsing and wiring, nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::compile;
use crate::serve::Server;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Declarative LLM pipelines served as streaming SSE endpoints"
)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve every pipeline in DIR.
    Serve {
        /// Directory holding settings.yaml and the pipeline files.
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
        /// Listen address, overriding server.listen in settings.yaml.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Compile the pipelines in DIR and print every problem; exit 1 if any.
    Check {
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
    },
    /// Spend, tokens, errors and time to first token from the ledger.
    Usage {
        /// Directory whose settings.yaml names the ledger.
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
        /// How far back: a duration such as 24h or 7d.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Group rows by pipeline, model, day, API key or team.
        #[arg(long, value_enum, default_value = "pipeline")]
        by: UsageBy,
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
        /// The ledger URL, instead of the one in settings.yaml.
        #[arg(long)]
        storage: Option<String>,
    },
    /// Run fault scenarios (YAML) against the pipelines, with a mock provider
    /// on a virtual clock; exit 1 if any fails.
    Test(TestArgs),
    /// Proxy requests to a provider and save each streamed answer with its timing.
    Record(RecordArgs),
    /// Serve a mock OpenAI and Anthropic provider with set timing, lengths
    /// and faults (to measure a gateway or an application against it).
    Mock(Box<crate::mock_cmd::MockArgs>),
    /// Write a new pipelines directory (settings, a demo pipeline and its
    /// recording) that `sluice serve DIR` serves at once.
    Init {
        #[arg(default_value = "pipelines")]
        dir: PathBuf,
        /// Replace files that are already there.
        #[arg(long)]
        force: bool,
    },
    /// Print the JSON Schema of the settings file or of a pipeline file
    /// (both, as one object, when neither is named), for editor completion.
    Schema {
        #[arg(value_enum)]
        file: Option<SchemaFile>,
        /// Write settings.schema.json and pipeline.schema.json into DIR instead.
        #[arg(long, value_name = "DIR", conflicts_with = "file")]
        out: Option<PathBuf>,
    },
    /// Load an OpenAI Chat Completions or Anthropic Messages endpoint and
    /// report TTFT, ITL, TPOT, E2E and throughput (`compare A.json B.json`:
    /// two runs side by side).
    Bench(Box<crate::bench::command::BenchArgs>),
    /// API keys: `sluice keys new NAME` makes one.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// A new API key: prints its secret once, and the entry (holding only
    /// the secret's hash) to paste under `keys:` in settings.yaml.
    New {
        /// The key's name (letters, digits, '_', '-', '.').
        name: String,
        /// The team it belongs to.
        #[arg(long)]
        team: Option<String>,
        /// Pipelines it may call, comma-separated (default: every one).
        #[arg(long, value_delimiter = ',')]
        pipelines: Vec<String>,
        /// One JSON object (name, secret, hash) instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `sluice test`: fault scenarios against the testkit's mock provider.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// A scenario file, or a directory of them (searched recursively).
    #[arg(default_value = "fixtures/scenarios")]
    pub path: PathBuf,
    /// Write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Run on the real clock instead of tokio's paused one (stalls take their time).
    #[arg(long)]
    pub real_time: bool,
    /// Scenarios run at once, each on its own thread and runtime.
    #[arg(long, default_value_t = default_jobs())]
    pub jobs: usize,
    /// The pipelines directory, for scenarios that do not name one.
    #[arg(long, default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// Where `fixture:` paths are found, for scenarios that do not say.
    #[arg(long, default_value = "fixtures/recorded")]
    pub recordings: PathBuf,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4))
}

/// `sluice record`: a recording proxy in front of a provider.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// The provider to forward to, e.g. `https://api.openai.com` (request
    /// paths are appended to its path).
    #[arg(long)]
    pub upstream: String,
    /// Where the first stream body goes (later ones: FILE with .2, .3... before
    /// its extension); each gets a FILE.timing sidecar.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: std::net::SocketAddr,
    /// Stop after this many requests (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<usize>,
}

/// Which file's schema `sluice schema` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SchemaFile {
    /// settings.yaml.
    Settings,
    /// A pipeline file.
    Pipeline,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum UsageBy {
    Pipeline,
    Model,
    Day,
    Key,
    Team,
}

pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

/// `sluice check`: prints diagnostics (errors and warnings) to stdout.
pub fn check(dir: &std::path::Path) -> ExitCode {
    match compile::load_dir(dir) {
        Ok(catalog) => {
            for w in &catalog.warnings {
                println!("{w}");
            }
            println!(
                "{}: {} pipeline(s) ok",
                dir.display(),
                catalog.pipelines.len()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            for d in &diags {
                println!("{d}");
            }
            let errors = diags.iter().filter(|d| d.is_error()).count();
            println!("{errors} error(s)");
            ExitCode::FAILURE
        }
    }
}

/// `sluice serve`: refuses to start on any configuration error.
pub async fn serve(
    dir: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let catalog = match compile::load_dir(dir) {
        Ok(c) => c,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!(
                "not serving: fix the errors above (sluice check {} shows them)",
                dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    for w in &catalog.warnings {
        tracing::warn!("{w}");
    }
    ledger_beside_pipelines(dir, &catalog.storage);
    let addr = listen.unwrap_or(catalog.server.listen);
    let names: Vec<String> = catalog.pipelines.keys().cloned().collect();
    let server = Server::bind(catalog, addr).await?;
    let local = server.local_addr()?;
    tracing::info!(addr = %local, pipelines = ?names, "serving");
    // SIGHUP or a changed file: compile again, swap in what is good.
    let stop_watching = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(crate::serve::watch(
        dir.to_path_buf(),
        server.reload_handle(),
        stop_watching.clone(),
    ));
    server.run(shutdown_signal()).await;
    stop_watching.cancel();
    let _ = watcher.await;
    Ok(ExitCode::SUCCESS)
}

/// Warns when the SQLite ledger sits in the watched pipelines directory
/// itself: every write to it (and its WAL) wakes the directory watcher, a
/// few percent of the CPU under load. A subdirectory is not watched.
fn ledger_beside_pipelines(dir: &std::path::Path, storage: &str) {
    let Some(path) = storage.strip_prefix("sqlite:") else {
        return;
    };
    let path = std::path::Path::new(path.trim_start_matches("//"));
    let (Some(parent), Ok(dir)) = (path.parent(), dir.canonicalize()) else {
        return;
    };
    if parent.canonicalize().is_ok_and(|p| p == dir) {
        tracing::warn!(
            ledger = %path.display(),
            "the ledger is in the pipelines directory itself: each write wakes its watcher; a subdirectory (e.g. data/) is not watched"
        );
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// `sluice usage`: reads the ledger and prints totals per group.
pub async fn usage(
    dir: &std::path::Path,
    since: &str,
    by: UsageBy,
    json: bool,
    storage: Option<String>,
) -> anyhow::Result<ExitCode> {
    use crate::ledger::report::{self, GroupBy};
    let since = humantime::parse_duration(since).map_err(|_| {
        anyhow::anyhow!("invalid --since \"{since}\", expected a duration such as 24h or 7d")
    })?;
    let storage = match storage {
        Some(s) => s,
        None => match compile::load_dir(dir) {
            Ok(c) => c.storage,
            Err(diags) => {
                for d in diags.iter().filter(|d| d.is_error()) {
                    eprintln!("{d}");
                }
                anyhow::bail!(
                    "cannot read the ledger location from {}; fix the errors or pass --storage",
                    dir.display()
                );
            }
        },
    };
    let ledger = crate::ledger::Ledger::open(&storage).await?;
    let since_ms = crate::ledger::money::now_ms() - since.as_millis() as i64;
    let rows = ledger.rows_since(since_ms).await?;
    let by = match by {
        UsageBy::Pipeline => GroupBy::Pipeline,
        UsageBy::Model => GroupBy::Model,
        UsageBy::Day => GroupBy::Day,
        UsageBy::Key => GroupBy::Key,
        UsageBy::Team => GroupBy::Team,
    };
    let groups = report::summarize(&rows, by);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "since_ms": since_ms, "groups": groups })
            )?
        );
    } else if groups.is_empty() {
        println!(
            "no requests in the ledger since {}",
            humantime::format_duration(since)
        );
    } else {
        print!("{}", report::render_table(&groups, by));
    }
    ledger.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `sluice test`: prints progress, failures and `N passed, M failed`.
pub fn test(args: &TestArgs) -> ExitCode {
    use crate::scenario::{Defaults, RunOptions, TestCommand, test_command};
    let cmd = TestCommand {
        path: args.path.clone(),
        defaults: Defaults {
            pipelines: args.pipelines.clone(),
            recordings: args.recordings.clone(),
        },
        run: RunOptions {
            real_time: args.real_time,
            ..RunOptions::default()
        },
        jobs: args.jobs.max(1),
        junit: args.junit.clone(),
    };
    let stdout = std::io::stdout();
    match test_command(&cmd, &mut stdout.lock()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sluice test: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice record`: serves until Ctrl-C or `--count` requests.
pub async fn record(args: &RecordArgs) -> anyhow::Result<ExitCode> {
    crate::scenario::record::record_command(
        &args.upstream,
        &args.out,
        args.listen,
        args.count,
        shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `sluice keys new`: a secret, shown once, and the entry to paste.
pub fn keys_new(name: &str, team: Option<&str>, pipelines: &[String], json: bool) -> ExitCode {
    use crate::auth;
    if !auth::valid_name(name) || team.is_some_and(|t| !auth::valid_name(t)) {
        eprintln!("error: a key or team name is 1 to 64 letters, digits, '_', '-' or '.'");
        return ExitCode::from(2);
    }
    let secret = match auth::new_secret() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: the operating system gave no random bytes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let hash = auth::format_hash(&auth::digest(&secret));
    if json {
        println!(
            "{}",
            serde_json::json!({"name": name, "secret": secret, "hash": hash, "team": team, "pipelines": pipelines})
        );
        return ExitCode::SUCCESS;
    }
    let list = if pipelines.is_empty() {
        "[\"*\"]".to_string()
    } else {
        format!("[{}]", pipelines.join(", "))
    };
    println!("The secret of key \"{name}\" (shown only now; Sluice keeps only its hash):\n");
    println!("  {secret}\n");
    println!("Clients send it as `Authorization: Bearer <secret>` or `x-api-key: <secret>`.");
    println!("Paste this under `keys:` in settings.yaml:\n");
    println!("  {name}:");
    println!("    hash: {hash}");
    println!("    pipelines: {list}");
    if let Some(team) = team {
        println!("    team: {team}");
    }
    ExitCode::SUCCESS
}

/// `sluice init`: writes the directory, then says how to serve it.
pub fn init(dir: &std::path::Path, force: bool) -> ExitCode {
    match crate::init::write(dir, force) {
        Ok(written) => {
            for path in &written {
                println!("wrote {}", path.display());
            }
            let dir = dir.display();
            println!("\nServe it (no API key needed) with `sluice serve {dir}`, then:");
            println!(
                "  curl -N localhost:8080/v1/pipelines/demo -H 'content-type: application/json' -d '{{\"input\": \"hi\"}}'"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice schema`: prints one schema or both, or writes both into a folder.
pub fn schema(file: Option<SchemaFile>, out: Option<&std::path::Path>) -> ExitCode {
    use crate::config::schema;
    if let Some(dir) = out {
        for (name, value) in [
            (schema::SETTINGS_SCHEMA_FILE, schema::settings()),
            (schema::PIPELINE_SCHEMA_FILE, schema::pipeline()),
        ] {
            let path = dir.join(name);
            let written = std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, schema::to_text(&value)));
            if let Err(e) = written {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        }
        return ExitCode::SUCCESS;
    }
    let value = match file {
        Some(SchemaFile::Settings) => schema::settings(),
        Some(SchemaFile::Pipeline) => schema::pipeline(),
        None => serde_json::json!({
            "settings": schema::settings(),
            "pipeline": schema::pipeline(),
        }),
    };
    print!("{}", schema::to_text(&value));
    ExitCode::SUCCESS
}
