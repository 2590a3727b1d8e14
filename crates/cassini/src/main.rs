//! `cassini`: the broker and its command line.
//!
//! # Layout
//! - `cli`: the command-line grammar (clap).
//! - `serve`: `cassini serve`, wiring the broker core to the QUIC transport.
//! - `certs_cmd`: `cassini certs init|issue`.
//! - `pubsub`: `cassini pub` and `cassini sub`, thin wrappers over `cassini-client`.
//! - `bench`: `cassini bench`, measurements against an in-process broker.
//! - `reqreply`: `cassini req` and `cassini reply`, request/reply over `cassini-client`;
//!   `reply_command` runs `reply --command`'s shell command, bounded in time and output.
//! - `logging`: tracing set-up.

mod bench;
mod certs_cmd;
mod cli;
mod logging;
mod pubsub;
mod reply_command;
mod reqreply;
mod serve;

use std::process::ExitCode;

use clap::Parser;

use cli::{BenchScenario, CertsCommand, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, cli.command.default_log_level());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Certs { command } => match command {
                CertsCommand::Init(args) => certs_cmd::init(args),
                CertsCommand::Issue(args) => certs_cmd::issue(args),
            },
            Command::Bench { scenario } => match scenario {
                BenchScenario::Durable(args) => bench::durable::run(args).await,
                BenchScenario::Hol(args) => bench::hol::run(args).await,
                BenchScenario::Latency(args) => bench::latency::run(args).await,
                BenchScenario::Throughput(args) => bench::throughput::run(args).await,
            },
            Command::Pub(args) => pubsub::publish(args).await,
            Command::Sub(args) => pubsub::subscribe(args).await,
            Command::Req(args) => reqreply::request(args).await,
            Command::Reply(args) => reqreply::reply(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
