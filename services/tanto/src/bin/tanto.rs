//! The operator CLI; see `tanto::cli`.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    tanto::cli::main(tanto::cli::Cli::parse()).await
}
