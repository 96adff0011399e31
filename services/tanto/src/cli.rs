//! The `tanto` operator CLI.
//!
//! Every failure prints one short sentence saying what went wrong and exits
//! non-zero; `-v` adds the chain of causes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::catalog::Catalog;
use crate::config::{Settings, redact_url};
use crate::routing::{self, RoutingFile};

#[derive(Debug, Parser)]
#[command(
    name = "tanto",
    version,
    about = "Operate tanto: schema, routing data and topics"
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
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every topic that does not exist yet.
    Ensure,
}

/// Runs the CLI and turns its outcome into an exit code.
pub async fn main(cli: Cli) -> ExitCode {
    let verbose = cli.verbose;
    let result = match Settings::from_env() {
        Ok(settings) => run(cli.command, &settings).await,
        Err(err) => Err(err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if verbose {
                eprintln!("tanto: {err:?}");
            } else {
                eprintln!("tanto: {err}");
            }
            ExitCode::FAILURE
        }
    }
}

pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    match command {
        Command::Migrate => migrate(settings).await,
        Command::Apply {
            file,
            prune,
            dry_run,
        } => apply(settings, &file, prune, dry_run).await,
        Command::Topics {
            command: TopicsCommand::Ensure,
        } => ensure_topics(settings).await,
    }
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let applied = crate::db::migrate(&pool).await?;
    say(&format!(
        "schema up to date ({} migrations applied now)",
        applied.len()
    ))
}

async fn apply(settings: &Settings, path: &Path, prune: bool, dry_run: bool) -> anyhow::Result<()> {
    let routing = read_routing_file(settings, path)?;
    if dry_run {
        return say(&format!(
            "{} is valid (tenant {}); nothing was changed",
            path.display(),
            routing.tenant
        ));
    }
    let pool = connect(settings).await?;
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to the database")?;
    let tx = client
        .transaction()
        .await
        .context("Failed to start a transaction")?;
    let summary = routing::apply(&tx, &routing, prune).await?;
    tx.commit()
        .await
        .context("Failed to commit the routing data")?;
    say(&format!(
        "applied tenant {}: {} accounts, {} groups, {} products, {} customers; {} pruned",
        routing.tenant,
        summary.accounts,
        summary.groups,
        summary.products,
        summary.customers,
        summary.pruned
    ))
}

/// Reads and checks a routing file; every problem is listed in the error.
fn read_routing_file(settings: &Settings, path: &Path) -> anyhow::Result<routing::ValidRouting> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let catalog = Catalog::load(&settings.mail.catalog)?;
    RoutingFile::parse(&text)
        .and_then(|file| file.validate(&catalog))
        .map_err(|invalid| {
            let problems: Vec<String> = invalid.problems.iter().map(|p| format!("  {p}")).collect();
            anyhow::anyhow!(
                "{} is invalid; nothing was changed:\n{}",
                path.display(),
                problems.join("\n")
            )
        })
}

async fn ensure_topics(settings: &Settings) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    let created =
        crate::kafka::ensure_topics(&kafka.brokers, &kafka.topics.all(), kafka.topic_partitions)
            .await?;
    say(&format!("topics ready ({} created now)", created.len()))
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

fn say(line: &str) -> anyhow::Result<()> {
    writeln!(std::io::stdout(), "{line}").context("Failed to write to standard output")
}
