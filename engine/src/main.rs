use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{self, Cli, Command};

/// jemalloc: frees across threads (spans, events) without glibc's arena
/// locks; see the dependency's comment in Cargo.toml.
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<ExitCode> {
    let args = Cli::parse();
    match args.command {
        Command::Check { dir } => Ok(cli::check(&dir)),
        Command::Usage {
            dir,
            since,
            by,
            json,
            storage,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(cli::usage(&dir, &since, by, json, storage))
        }
        Command::Test(test) => Ok(cli::test(&test)),
        Command::Init { dir, force } => Ok(cli::init(&dir, force)),
        Command::Schema { file, out } => Ok(cli::schema(file, out.as_deref())),
        Command::Keys {
            action:
                cli::KeysAction::New {
                    name,
                    team,
                    pipelines,
                    json,
                },
        } => Ok(cli::keys_new(&name, team.as_deref(), &pipelines, json)),
        Command::Record(record) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(cli::record(&record))
        }
        Command::Bench(bench) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            Ok(rt.block_on(sluice::bench::command::bench(&bench)))
        }
        Command::Mock(mock) => Ok(sluice::mock_cmd::run(&mock)),
        Command::Serve { dir, listen } => {
            cli::init_logging(args.log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(cli::serve(&dir, listen))
        }
    }
}
