//! The Postgres pool and the schema migrations.

use std::str::FromStr;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::config::{DatabaseSettings, redact_url};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Builds a pool; connections are made lazily, so this does not touch the
/// database.
pub fn pool(settings: &DatabaseSettings) -> anyhow::Result<Pool> {
    let url = settings.url.expose();
    let mut config = tokio_postgres::Config::from_str(url).with_context(|| {
        format!(
            "TANTO_DATABASE_URL is not a Postgres URL: {}",
            redact_url(url)
        )
    })?;
    config.connect_timeout(settings.timeout);
    config.application_name("tanto");
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeouts = Timeouts {
        wait: Some(settings.timeout),
        create: Some(settings.timeout),
        recycle: Some(settings.timeout),
    };
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
        .context("Failed to build the database pool")
}

/// Creates or upgrades the schema; returns the names of the migrations run.
pub async fn migrate(pool: &Pool) -> anyhow::Result<Vec<String>> {
    let mut client = pool
        .get()
        .await
        .context("Failed to connect to the database")?;
    let report = embedded::migrations::runner()
        .run_async(&mut **client)
        .await
        // The runner's own message says which migration and why, which is
        // what an operator needs on the one line the CLI prints.
        .map_err(|err| anyhow::anyhow!("the database migrations failed: {err}"))?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| m.to_string())
        .collect())
}
