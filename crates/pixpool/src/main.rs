//! The `pixpool` binary: one executable, role chosen by argv. `pixpool serve`
//! (the default) is the supervisor; it execs `pixpool front --slot N` and
//! `pixpool worker --slot N` for its children, so `ps` shows every role, each
//! with its settings in one `--settings` argument (see `settings`).

mod backend;
mod cli;
mod config;
mod exit;
mod logging;
mod roles;
mod serve;
mod settings;
mod umask;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // A child's command line comes from the supervisor: one it cannot
        // parse will not parse on a respawn either.
        Err(e) if e.use_stderr() && exit::is_child_role(std::env::args_os().nth(1).as_deref()) => {
            let err = exit::ConfigError::Arguments(e);
            eprintln!("pixpool: error: {err}");
            return ExitCode::from(exit::EX_CONFIG);
        }
        Err(e) => e.exit(),
    };
    let role = match &cli.command {
        None | Some(cli::Command::Serve(_)) => "supervisor",
        Some(cli::Command::Front(_)) => "front",
        Some(cli::Command::Worker(_)) => "worker",
        Some(cli::Command::Admin(_)) => "admin",
        Some(cli::Command::Courier(_)) => "courier",
        Some(cli::Command::Sweeper(_)) => "sweeper",
        Some(cli::Command::CheckConfig(_)) => "check-config",
        Some(cli::Command::Upload(_)) => "upload",
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The chain, once: "could not X: because Y: because Z".
            eprintln!("pixpool {role}: error: {err:#}");
            tracing::error!(cause = format!("{err:#}"), "exiting on error");
            exit::code_for(&err)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let exit = run_role(cli);
    // The spare files this process replaced records with are of no use to another.
    pixpool_store::fsutil::remove_spares();
    exit
}

fn run_role(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        None => serve::serve(cli.serve),
        Some(cli::Command::Serve(args)) => serve::serve(args),
        Some(cli::Command::Front(args)) => roles::front(args),
        Some(cli::Command::Worker(args)) => roles::worker(args),
        Some(cli::Command::Admin(args)) => roles::admin(args),
        Some(cli::Command::Courier(args)) => roles::courier(args),
        Some(cli::Command::Sweeper(args)) => roles::sweeper(args),
        Some(cli::Command::CheckConfig(args)) => serve::check_config(args),
        Some(cli::Command::Upload(args)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(pixpool_client::run(args)),
    }
}
