//! The `tanto` operator CLI, one file per command group.
//!
//! Results go to standard output, in lines a person reads or, with
//! `--json`, as one JSON document for scripts. Every failure prints one
//! short sentence to standard error saying what went wrong and what to do,
//! and exits non-zero: 2 for a malformed argument or setting, 1 for
//! everything else. `-v` adds the chain of causes.

mod dead_letters;
mod history;
mod routing;
mod table;
mod templates;
mod time;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Settings, redact_url};

pub use dead_letters::{DeadLettersCommand, KindCommand, SelectionArgs};
pub use templates::TemplatesCommand;

#[derive(Debug, Parser)]
#[command(
    name = "tanto",
    version,
    about = "Operate tanto: schema, routing data, topics, send history, dead letters and mail \
             templates"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print the full chain of causes of an error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the Postgres schema.
    Migrate,
    /// Load one business's routing data from a YAML file (docs/routing.md).
    Apply {
        /// The routing file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Also remove the tenant's accounts, groups, products and customers
        /// that the file does not name.
        #[arg(long)]
        prune: bool,
        /// Check the file and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Manage the Kafka topics tanto uses.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// List, show and replay the deliveries the mailer gave up on
    /// (tanto.deliveries.dlq) and, with `events`, unroutable events; read
    /// the replay audit.
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        command: DeadLettersCommand,
    },
    /// The send history: deliveries newest first, filtered, a page at a
    /// time; `history show ID` for one delivery.
    History(history::HistoryArgs),
    /// Render one catalog mail for a sample event with a tenant's routing
    /// data, without sending it.
    Preview(templates::PreviewArgs),
    /// Check the mail templates.
    Templates {
        #[command(subcommand)]
        command: TemplatesCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every topic that does not exist yet.
    Ensure,
}

/// A malformed argument: the operator fixes the command line. Exit code 2,
/// like clap's own argument errors and a bad setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// Runs the CLI and turns its outcome into an exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let verbose = cli.verbose;
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("tanto: {err:#}");
            return ExitCode::from(2);
        }
    };
    match run(cli.command, &settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if verbose {
                eprintln!("tanto: {err:?}");
            } else {
                eprintln!("tanto: {err}");
            }
            if err.is::<Usage>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    match command {
        Command::Migrate => routing::migrate(settings).await,
        Command::Apply {
            file,
            prune,
            dry_run,
        } => routing::apply(settings, &file, prune, dry_run).await,
        Command::Topics {
            command: TopicsCommand::Ensure,
        } => routing::ensure_topics(settings).await,
        Command::DeadLetters { command } => dead_letters::run(settings, command).await,
        Command::History(args) => history::run(settings, args).await,
        Command::Preview(args) => templates::preview(settings, args).await,
        Command::Templates { command } => templates::run(settings, command),
    }
}

/// A pool whose database answered, or an error naming the URL without its
/// password.
async fn connect(settings: &Settings) -> anyhow::Result<deadpool_postgres::Pool> {
    let pool = crate::db::pool(&settings.database)?;
    let url = redact_url(settings.database.url.expose());
    let reached = pool.get().await.map(drop);
    reached.map_err(|err| {
        anyhow::anyhow!(
            "the database at {url} is unreachable ({})",
            crate::error_chain(&err)
        )
    })?;
    Ok(pool)
}

/// Prints one line of results.
fn say(line: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{line}").context("Failed to write to standard output")
}

/// Prints the `--json` form of a result.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("Failed to encode the result")?;
    say(&text)
}
