//! The `pixpool` binary: one executable, role chosen by argv. `pixpool serve`
//! (the default) is the supervisor; it execs `pixpool front --slot N` and
//! `pixpool worker --slot N` for its children, so `ps` shows every role.

mod cli;
mod config;
mod logging;
mod roles;
mod serve;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let role = match &cli.command {
        None | Some(cli::Command::Serve(_)) => "supervisor",
        Some(cli::Command::Front(_)) => "front",
        Some(cli::Command::Worker(_)) => "worker",
        Some(cli::Command::Admin(_)) => "admin",
        Some(cli::Command::CheckConfig(_)) => "check-config",
        Some(cli::Command::Upload(_)) => "upload",
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The chain, once: "could not X: because Y: because Z".
            eprintln!("pixpool {role}: error: {err:#}");
            tracing::error!(cause = format!("{err:#}"), "exiting on error");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => serve::serve(cli.serve),
        Some(cli::Command::Serve(args)) => serve::serve(args),
        Some(cli::Command::Front(args)) => roles::front(args),
        Some(cli::Command::Worker(args)) => roles::worker(args),
        Some(cli::Command::Admin(args)) => roles::admin(args),
        Some(cli::Command::CheckConfig(args)) => serve::check_config(args),
        Some(cli::Command::Upload(args)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(pixpool_client::run(args)),
    }
}
