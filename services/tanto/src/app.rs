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
    let deadline = settings.shutdown_deadline;
    let work = work(settings, shutdown.clone());
    tokio::pin!(work);
    let finished = tokio::select! {
        result = &mut work => Some(result),
        () = overdue(&shutdown, deadline) => None,
    };
    match finished {
        Some(Ok(())) => {
            tracing::info!(binary = name, "stopped");
            ExitCode::SUCCESS
        }
        Some(Err(err)) => {
            tracing::error!(
                binary = name,
                error = format!("{err:#}"),
                "stopped on an error"
            );
            ExitCode::FAILURE
        }
        None => {
            tracing::error!(
                binary = name,
                ?deadline,
                "missed the shutdown deadline; unfinished work is redone after restart"
            );
            ExitCode::FAILURE
        }
    }
}

/// Resolves once shutdown was asked for and the deadline has passed since.
/// The consume loop uses the same deadline for its final flush, so a little
/// slack is left for the commit after it.
async fn overdue(shutdown: &Shutdown, deadline: std::time::Duration) {
    shutdown.wait().await;
    tokio::time::sleep(deadline + std::time::Duration::from_secs(5)).await;
}
