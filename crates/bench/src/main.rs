//! `pixpool-bench`: see the library's documentation (`cargo doc -p pixpool-bench`) for
//! the method. Thin: parse, run, print the error chain once.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = pixpool_bench::cli::Cli::parse();
    match pixpool_bench::run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pixpool-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
