//! What every long-running binary does around its work: read the settings,
//! start logging, turn SIGTERM and SIGINT into a shutdown, and say how the
//! work ended.

use std::process::ExitCode;

use crate::config::Settings;
use crate::shutdown::Shutdown;

/// Runs `work` as the binary `name`. A bad setting stops start-up with one
/// sentence on standard error and exit code 2.
pub async fn serve<F, Fut>(name: &'static str, work: F) -> ExitCode
where
    F: FnOnce(Settings, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: {err:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = crate::telemetry::init(&settings.telemetry) {
        eprintln!("{name}: {err:#}");
        return ExitCode::from(2);
    }
    let shutdown = Shutdown::new();
    if let Err(err) = shutdown.on_signals() {
        tracing::error!(error = %err, "cannot listen for shutdown signals");
        return ExitCode::FAILURE;
    }
    match work(settings, shutdown).await {
        Ok(()) => {
            tracing::info!(binary = name, "stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(
                binary = name,
                error = format!("{err:#}"),
                "stopped on an error"
            );
            ExitCode::FAILURE
        }
    }
}
