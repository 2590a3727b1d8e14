//! `cassini`: the broker and its command line.
//!
//! Layering: `main` dispatches each command of `cli` (the grammar) to its module (`serve`,
//! `pubsub`, `top`, ...); `config` (the settings and their value types) sits below `cli` and
//! every command and imports none of them.
//!
//! # Layout
//! - `cli`: the command-line grammar (clap).
//! - `config`: `serve`'s settings: TOML file, `CASSINI_*` environment, flags; `cassini config`.
//! - `serve`: `cassini serve`, wiring the broker core to the QUIC transport.
//! - `monitoring`: `serve`'s HTTP monitoring endpoint (`cassini-monitor`).
//! - `reload`: hot reload of certificates, CRLs and the ACL on SIGHUP and file changes.
//! - `certs_cmd`: `cassini certs init|issue|revoke|rotate-server`.
//! - `pubsub`: `cassini pub` and `cassini sub`, thin wrappers over `cassini-client`.
//! - `bench`: `cassini bench`, measurements against an in-process broker.
//! - `reqreply`: `cassini req` and `cassini reply`, request/reply over `cassini-client`;
//!   `reply_command` runs `reply --command`'s shell command, bounded in time and output.
//! - `top`: `cassini top` / `cassini stats`, a terminal view of the monitoring endpoint.
//! - `context`: `cassini context ...`, and how client commands settle server, certificates
//!   and names (flag, environment, context, default).
//! - `server_cmd`: `cassini server ping|check|info|report`, a running broker asked over QUIC
//!   and its monitoring endpoint.
//! - `cluster_cmd`: `cassini cluster members|add|remove`, the Raft membership through a
//!   member's monitoring endpoint.
//! - `events_cmd`: `cassini events`, the broker's system events (`$SYS.event.>`) as lines.
//! - `signals`: SIGINT and SIGTERM, handled alike by every long-running command.
//! - `logging`: tracing set-up.

mod bench;
mod certs_cmd;
mod cli;
mod cluster_cmd;
mod config;
mod context;
mod demo;
mod events_cmd;
mod logging;
mod monitoring;
mod pubsub;
mod reload;
mod reply_command;
mod reqreply;
mod serve;
mod server_cmd;
mod signals;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{CertsCommand, Cli, Command, ConfigCommand};
use config::LogFormat;

/// mimalloc instead of the system allocator, built without transparent huge pages: see
/// docs/BENCHMARKS.md for what each saved.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        let filter = logging::tool_filter(cli.command.default_log_level());
        logging::init(cli.log_format.unwrap_or(LogFormat::Pretty), filter);
    }
    block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                // The broker's log settings are part of its configuration, so logging starts
                // once that is read; a configuration error is the one message before it.
                let settings = serve::settings(&args, cli.log_format)?;
                let storage = serve::StorageFlags::from_args(&args);
                let filter = logging::serve_filter(&settings.log.level);
                logging::init(settings.log.format, filter);
                serve::run(settings, storage).await
            }
            Command::Config { command } => match command {
                ConfigCommand::Check { file } => {
                    let settings = config::check_file(&file)?;
                    serve::check_files(&settings)?;
                    let env = config::process_env();
                    for warning in settings
                        .warnings()
                        .into_iter()
                        .chain(config::unknown_env(&env))
                    {
                        report(format_args!("warning: {warning}"));
                    }
                    println!("{}: ok", file.display());
                    Ok(ExitCode::SUCCESS)
                }
                ConfigCommand::Default => write_stdout(config::default_file().as_bytes()),
            },
            Command::Top(args) => top::run(args).await,
            Command::Server { command } => server_cmd::run(command).await,
            Command::Cluster { command } => cluster_cmd::run(command).await,
            Command::Context { command } => context::run(command),
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "cassini", &mut script);
                write_stdout(&script)
            }
            Command::Certs { command } => match command {
                CertsCommand::Init(args) => certs_cmd::init(args),
                CertsCommand::Issue(args) => certs_cmd::issue(args),
                CertsCommand::Revoke(args) => certs_cmd::revoke(args),
                CertsCommand::RotateServer(args) => certs_cmd::rotate_server(args),
            },
            Command::Bench { scenario } => bench::run(scenario).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Pub(args) => pubsub::publish(args).await,
            Command::Sub(args) => pubsub::subscribe(args).await,
            Command::Req(args) => reqreply::request(args).await,
            Command::Events(args) => events_cmd::run(args).await,
            Command::Reply(args) => reqreply::reply(args).await,
        }
    })
}

/// Writes one line to standard error, ignoring a closed stderr (`eprintln!` would panic).
pub(crate) fn report(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `bytes` to standard output; a closed pipe is an error, not a panic.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|err| anyhow::anyhow!("writing to standard output: {err}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` on a multi-threaded runtime and turns its outcome into the exit status.
fn block_on(command: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(format_args!("error: cannot start the async runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(err) => {
            report(format_args!("error: {err:#}"));
            ExitCode::FAILURE
        }
    }
}
