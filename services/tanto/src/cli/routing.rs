//! `tanto migrate`, `tanto apply` and `tanto topics ensure`: the schema,
//! routing data and topics.

use std::path::Path;

use anyhow::Context;

use super::{connect, say};
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::routing::{self, RoutingFile};

pub(super) async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let applied = crate::db::migrate(&pool).await?;
    say(&format!(
        "schema up to date ({} migrations applied now)",
        applied.len()
    ))
}

pub(super) async fn apply(
    settings: &Settings,
    path: &Path,
    prune: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
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

pub(super) async fn ensure_topics(settings: &Settings) -> anyhow::Result<()> {
    let kafka = &settings.kafka;
    let created =
        crate::kafka::ensure_topics(&kafka.brokers, &kafka.topics.all(), kafka.topic_partitions)
            .await?;
    say(&format!("topics ready ({} created now)", created.len()))
}
