//! The `sluice bench` command line: arguments, checks, and wiring a run
//! to its outputs (progress bar, table, `--json`), and `compare`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::client::{Api, Target, TargetOptions};
use super::metrics::Slo;
use super::progress::Progress;
use super::report::{self, Report, RunConfig, SCHEMA};
use super::workload::{self, Arrivals, Lengths, Load, PromptSource, Stop};
use super::{Plan, compare};

/// `sluice bench URL [OPTIONS]` or `sluice bench compare A.json B.json`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchAction>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum BenchAction {
    /// Two reports (written by --json) side by side, with B/A ratios.
    Compare { a: PathBuf, b: PathBuf },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The endpoint, e.g. http://127.0.0.1:8080/v1/chat/completions,
    /// https://api.anthropic.com/v1/messages or Sluice's
    /// http://127.0.0.1:8080/v1/pipelines/demo.
    pub url: Option<String>,
    /// The API it speaks (default: from the URL's path).
    #[arg(long, value_enum)]
    pub api: Option<Api>,
    /// The model to ask for (for Sluice's OpenAI and Anthropic endpoints:
    /// the pipeline's name; not needed for its pipeline API).
    #[arg(long, short)]
    pub model: Option<String>,
    /// A header sent with every request, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Environment variable holding the API key (default OPENAI_API_KEY
    /// or ANTHROPIC_API_KEY by API, used when set).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Closed loop: clients sending one request after another; a list
    /// (1,4,16) sweeps. The default (1) when no --rate is given.
    #[arg(long, short, value_delimiter = ',', conflicts_with = "rate")]
    pub concurrency: Vec<usize>,
    /// Open loop: requests per second whatever the server does; a list
    /// sweeps. Latencies count from each request's scheduled time.
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// How an open loop's requests arrive.
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrivals: Arrivals,
    /// Requests per step (default 100 unless --duration is given).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Time per step, e.g. 60s (with --requests: whichever ends first).
    #[arg(long)]
    pub duration: Option<String>,
    /// Warm-up before each step, not measured: a number of requests or a
    /// duration (e.g. 20 or 10s).
    #[arg(long, default_value = "0")]
    pub warmup: String,
    /// Prompt length in o200k tokens: N, LO..HI or normal:MEAN,SD.
    #[arg(long, default_value = "128", conflicts_with = "prompts")]
    pub prompt_tokens: String,
    /// Output tokens asked for (max_tokens): N, LO..HI or normal:MEAN,SD.
    #[arg(long, default_value = "128")]
    pub output_tokens: String,
    /// Prompts from a JSONL file: {"prompt": "..."} or {"messages": [...]},
    /// optionally "system" and "max_tokens", one per line.
    #[arg(long, value_name = "FILE")]
    pub prompts: Option<PathBuf>,
    /// Ask for whole answers (`stream: false`): no TTFT or ITL then.
    #[arg(long)]
    pub no_stream: bool,
    /// Objectives for goodput, e.g. ttft=200ms,tpot=50ms,e2e=5s.
    #[arg(long)]
    pub slo: Option<String>,
    /// A request that has not finished by then fails as `timeout`.
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    #[arg(long, default_value = "10s")]
    pub connect_timeout: String,
    /// Seeds prompts, lengths and Poisson arrivals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Open loop: most requests in flight; past it requests go late (and
    /// their latency shows it).
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Closed loop: start the clients one after another over this time
    /// (e.g. 2s), so that thousands do not connect at once.
    #[arg(long, default_value = "0s")]
    pub ramp: String,
    /// HTTP/2 without TLS (h2c, prior knowledge) for every URL, 100
    /// streams per connection; http:// URLs only.
    #[arg(long)]
    pub http2: bool,
    /// A JSON object merged into every request body, e.g. '{"ignore_eos": true}'.
    #[arg(long, value_name = "JSON")]
    pub extra_body: Option<String>,
    /// Also through a gateway: the same workload sent to URL (a gateway
    /// in front of the same kind of endpoint), in rounds alternating with
    /// the direct ones; the report adds what the gateway adds. Repeatable:
    /// each gateway takes its turn in every round. `NAME=URL` names it.
    #[arg(long, value_name = "[NAME=]URL")]
    pub via: Vec<String>,
    /// The model to ask the gateway for (default: --model; for Sluice, a
    /// pipeline's name). Once for every gateway, or once per --via in order.
    #[arg(long, value_name = "NAME", requires = "via")]
    pub via_model: Vec<String>,
    /// A header for the gateway, `Name: value` (repeatable; default: the
    /// --header ones).
    #[arg(long = "via-header", value_name = "NAME: VALUE", requires = "via")]
    pub via_headers: Vec<String>,
    /// Environment variable holding the gateway's API key (default: the
    /// usual one of its API when set, else the direct endpoint's key).
    #[arg(long, value_name = "VAR", requires = "via")]
    pub via_api_key_env: Option<String>,
    /// With --via: rounds per side, each with its share of --requests or
    /// --duration.
    #[arg(long, default_value_t = 4)]
    pub rounds: u32,
    /// Write the report as JSON to FILE (`-`: stdout, the table then goes to stderr).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the report as one self-contained HTML page of plots to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn duration(name: &str, v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|_| format!("invalid --{name} \"{v}\", expected a duration such as 30s"))
}

/// Arguments checked and turned into what a run needs.
pub fn plan(a: &RunArgs) -> Result<Planned, String> {
    let url = a
        .url
        .clone()
        .ok_or("the endpoint URL is missing (sluice bench URL --model NAME)")?;
    // Sluice's pipeline API names the pipeline in the path: no model.
    let pipeline_api = a.api.or_else(|| Api::of_url(&url)) == Some(Api::Pipeline);
    let model = match &a.model {
        Some(m) => m.clone(),
        None if pipeline_api => String::new(),
        None => {
            return Err(
                "--model is required (for Sluice's OpenAI or Anthropic endpoint: the pipeline's name)"
                    .into(),
            );
        }
    };
    let steps: Vec<Load> = if !a.rate.is_empty() {
        if let Some(r) = a.rate.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
            return Err(format!(
                "invalid --rate {r}, expected requests per second above 0"
            ));
        }
        a.rate
            .iter()
            .map(|&rate| Load::Open {
                rate,
                arrivals: a.arrivals,
            })
            .collect()
    } else if a.concurrency.is_empty() {
        vec![Load::Closed { concurrency: 1 }]
    } else {
        if a.concurrency.contains(&0) {
            return Err("invalid --concurrency 0, expected at least 1".into());
        }
        a.concurrency
            .iter()
            .map(|&concurrency| Load::Closed { concurrency })
            .collect()
    };
    let run_for = a
        .duration
        .as_deref()
        .map(|d| duration("duration", d))
        .transpose()?;
    let stop = Stop {
        requests: a
            .requests
            .or(if run_for.is_none() { Some(100) } else { None }),
        duration: run_for,
    };
    if stop.is_empty() {
        return Err("--requests and --duration must be above zero".into());
    }
    let warmup = match a.warmup.trim().parse::<u64>() {
        Ok(0) => Stop::none(),
        Ok(n) => Stop {
            requests: Some(n),
            duration: None,
        },
        Err(_) => Stop {
            requests: None,
            duration: Some(duration("warmup", &a.warmup).map_err(|_| {
                format!(
                    "invalid --warmup \"{}\", expected a number of requests or a duration",
                    a.warmup
                )
            })?),
        },
    };
    let output_tokens =
        Lengths::parse(&a.output_tokens).map_err(|e| format!("--output-tokens: {e}"))?;
    let prompts = match &a.prompts {
        Some(path) => PromptSource::File(workload::read_prompts(path)?),
        None => PromptSource::Synthetic {
            prompt_tokens: Lengths::parse(&a.prompt_tokens)
                .map_err(|e| format!("--prompt-tokens: {e}"))?,
        },
    };
    let slo = a
        .slo
        .as_deref()
        .map(Slo::parse)
        .transpose()?
        .unwrap_or_default();
    let timeout = duration("timeout", &a.timeout)?;
    let connect_timeout = duration("connect-timeout", &a.connect_timeout)?;
    let extra_body = match &a.extra_body {
        None => None,
        Some(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(serde_json::Value::Object(m)) => Some(m),
            _ => return Err("--extra-body must be a JSON object".into()),
        },
    };
    let api = a.api;
    let api_key = key(a.api_key_env.as_deref(), api, &url)?;
    let most_clients = steps
        .iter()
        .map(|l| match *l {
            Load::Closed { concurrency } => concurrency,
            Load::Open { .. } => a.max_in_flight.min(1024),
        })
        .max()
        .unwrap_or(1);
    let target = TargetOptions {
        url,
        api,
        model: model.clone(),
        stream: !a.no_stream,
        headers: a.headers.clone(),
        api_key,
        extra_body,
        timeout,
        connect_timeout,
        max_idle: most_clients,
        http2: a.http2,
    };
    if !a.via.is_empty() && a.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if a.via_model.len() > 1 && a.via_model.len() != a.via.len() {
        return Err(format!(
            "--via-model is given {} times for {} --via: give it once, or once per --via",
            a.via_model.len(),
            a.via.len()
        ));
    }
    let mut via = Vec::new();
    for (i, spec) in a.via.iter().enumerate() {
        let (name, url) = via_name(spec, i, a.via.len())?;
        // The gateway may speak another API than the endpoint behind it.
        let via_api = api.filter(|_| Api::of_url(url).is_none());
        let via_key = match key(a.via_api_key_env.as_deref(), via_api, url)? {
            Some(k) => Some(k),
            None => target.api_key.clone(),
        };
        let via_model = a.via_model.get(i).or(a.via_model.first());
        via.push((
            name,
            TargetOptions {
                url: url.to_string(),
                api: via_api,
                model: via_model.cloned().unwrap_or_else(|| model.clone()),
                headers: if a.via_headers.is_empty() {
                    a.headers.clone()
                } else {
                    a.via_headers.clone()
                },
                api_key: via_key,
                ..target.clone()
            },
        ));
    }
    if let Some((_, (name, _))) = via
        .iter()
        .enumerate()
        .find(|(i, (n, _))| n == "direct" || via[..*i].iter().any(|(m, _)| m == n))
    {
        return Err(format!(
            "two paths are named \"{name}\": give each --via a name of its own"
        ));
    }
    let plan = Plan {
        steps: steps.clone(),
        stop,
        warmup,
        prompts,
        output_tokens,
        slo,
        seed: a.seed,
        max_in_flight: a.max_in_flight.max(1),
        ramp: duration("ramp", &a.ramp)?,
        interrupt: tokio_util::sync::CancellationToken::new(),
    };
    let config = RunConfig {
        url: String::new(),
        api: String::new(),
        model,
        stream: !a.no_stream,
        load: steps[0].kind().into(),
        values: steps.iter().map(Load::value).collect(),
        arrivals: (!a.rate.is_empty()).then(|| a.arrivals.to_string()),
        requests: stop.requests,
        duration_s: stop.duration.map(|d| d.as_secs_f64()),
        warmup_requests: warmup.requests.filter(|n| *n > 0),
        warmup_s: warmup.duration.map(|d| d.as_secs_f64()),
        prompt_tokens: a.prompts.is_none().then(|| a.prompt_tokens.clone()),
        prompts_file: a.prompts.as_ref().map(|p| p.display().to_string()),
        output_tokens: a.output_tokens.clone(),
        slo: (!slo.is_empty()).then(|| slo.describe()),
        seed: a.seed,
        timeout_s: timeout.as_secs_f64(),
        max_in_flight: plan.max_in_flight,
        ramp_s: (!plan.ramp.is_zero()).then_some(plan.ramp.as_secs_f64()),
        http2: a.http2,
    };
    Ok(Planned {
        target,
        via,
        plan,
        config,
    })
}

/// What the arguments asked for.
pub struct Planned {
    pub target: TargetOptions,
    /// `--via`: the gateways, with their names.
    pub via: Vec<(String, TargetOptions)>,
    pub plan: Plan,
    pub config: RunConfig,
}

/// `--via [NAME=]URL`: the gateway's name (`via`, or `via N` of several,
/// without one) and its URL.
fn via_name(spec: &str, i: usize, of: usize) -> Result<(String, &str), String> {
    if let Some((name, url)) = spec.split_once('=')
        && !name.contains("://")
        && !name.contains('/')
    {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(format!(
                "invalid --via name \"{name}\": letters, digits, '-', '_' or '.', at most 32"
            ));
        }
        return Ok((name.to_string(), url));
    }
    let name = if of == 1 {
        "via".to_string()
    } else {
        format!("via {}", i + 1)
    };
    Ok((name, spec))
}

/// The API key: from the variable named, which must then be set, or from
/// the API's usual one (by `api`, or `url`'s path) when it is set.
fn key(var: Option<&str>, api: Option<Api>, url: &str) -> Result<Option<String>, String> {
    if let Some(var) = var {
        return std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set"));
    }
    let detected = api.or_else(|| Api::of_url(url));
    Ok(detected.and_then(|api| std::env::var(api.key_env()).ok().filter(|k| !k.is_empty())))
}

/// `sluice bench`: runs (or compares) and prints.
pub async fn bench(args: &BenchArgs) -> ExitCode {
    if let Some(BenchAction::Compare { a, b }) = &args.action {
        return compare_files(a, b);
    }
    let a = &args.run;
    let targets = plan(a).and_then(|p| {
        let target = Arc::new(Target::new(p.target)?);
        let via = p
            .via
            .into_iter()
            .map(|(name, o)| Ok((name, Arc::new(Target::new(o)?))))
            .collect::<Result<Vec<_>, String>>()?;
        Ok((target, via, p.plan, p.config))
    });
    let (target, via, plan, mut config) = match targets {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    config.url = target.display_url.clone();
    config.api = target.api.name().into();
    crate::tokens::init();
    let started_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let progress = (!a.quiet).then(Progress::new);
    // Ctrl-C: stop, and report what was measured; a second one quits.
    let interrupt = plan.interrupt.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\ninterrupted: reporting what was measured so far (Ctrl-C again to quit at once)"
            );
            interrupt.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let (steps, via) = if via.is_empty() {
        (
            super::run(target, &plan, progress.as_ref()).await,
            Vec::new(),
        )
    } else {
        let (names, gateways): (Vec<String>, Vec<Arc<Target>>) = via.into_iter().unzip();
        let (direct, through) = super::run_via(
            target,
            &gateways,
            &names,
            &plan,
            a.rounds,
            progress.as_ref(),
        )
        .await;
        let via = names
            .into_iter()
            .zip(gateways)
            .zip(through)
            .map(|((name, v), steps)| report::Via {
                name,
                url: v.display_url.clone(),
                api: v.api.name().into(),
                model: v.model.clone(),
                rounds: a.rounds,
                added: direct
                    .iter()
                    .zip(&steps)
                    .map(|(d, v)| super::Added::between(d, v))
                    .collect(),
                steps,
            })
            .collect();
        (direct, via)
    };
    let report = Report {
        schema: SCHEMA.into(),
        sluice_version: env!("CARGO_PKG_VERSION").into(),
        started_at,
        config,
        steps,
        via,
    };
    let table = report::render(&report);
    match &a.json {
        Some(p) if p.as_os_str() == "-" => {
            eprint!("{table}");
            match serde_json::to_string_pretty(&report) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("error: cannot write the report: {e}"),
            }
        }
        Some(p) => {
            print!("{table}");
            if let Err(e) = write_json(p, &report) {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
            println!("report written to {}", p.display());
        }
        None => print!("{table}"),
    }
    if let Some(p) = &a.html {
        if let Err(e) = std::fs::write(p, super::html::render(&report)) {
            eprintln!("error: cannot write {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
        eprintln!("page written to {}", p.display());
    }
    if plan.interrupt.is_cancelled() {
        return ExitCode::from(130);
    }
    let via_steps = report.via.iter().flat_map(|v| &v.steps);
    if report.steps.iter().chain(via_steps).any(|s| s.ok == 0) {
        eprintln!("error: a step had no successful request");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn write_json(path: &Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn compare_files(a: &Path, b: &Path) -> ExitCode {
    match (report::read(a), report::read(b)) {
        (Ok(ra), Ok(rb)) => {
            print!(
                "{}",
                compare::render(&ra, &rb, &a.display().to_string(), &b.display().to_string())
            );
            ExitCode::SUCCESS
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
