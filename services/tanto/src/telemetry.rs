//! Structured logs with `tracing`. The log policy is in docs/operations.md:
//! fields first, ERROR only when data is lost or an operator must act,
//! nothing per message at INFO, never an address, a body or a secret.

use tracing_subscriber::EnvFilter;

use crate::config::TelemetrySettings;

/// Installs the global subscriber; logs go to standard error.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|err| anyhow::anyhow!("TANTO_LOG is not a valid log filter: {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if settings.json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|err| anyhow::anyhow!("Failed to install the log subscriber: {err}"))
}
