//! The operational HTTP endpoints every long-running binary serves:
//! `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (it can reach what it needs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::future::{BoxFuture, join_all};
use rdkafka::producer::Producer;

use crate::shutdown::Shutdown;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency readiness depends on, e.g. the database.
pub struct Check {
    pub name: &'static str,
    pub probe: Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Binds `addr` and serves the endpoints until shutdown, in the background.
/// Binding happens now, so a port in use stops start-up.
pub async fn spawn(addr: SocketAddr, checks: Vec<Check>, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (TANTO_HTTP_ADDR)"))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(checks));
    tokio::spawn(async move {
        let server =
            axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await });
        if let Err(err) = server.await {
            tracing::warn!(error = %err, "the HTTP endpoints stopped");
        }
    });
    Ok(())
}

async fn metrics() -> String {
    crate::metrics::metrics().render()
}

/// 200 when every check passes; 503 naming the ones that failed.
async fn readyz(State(checks): State<Arc<Vec<Check>>>) -> (StatusCode, String) {
    let results = join_all(checks.iter().map(|check| async move {
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, (check.probe)()).await;
        let outcome =
            outcome.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in {CHECK_TIMEOUT:?}")));
        (check.name, outcome)
    }))
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, outcome)| outcome.as_ref().err().map(|err| format!("{name}: {err:#}")))
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failed.join("\n")),
        )
    }
}

/// The database answers a query.
pub fn database_check(pool: deadpool_postgres::Pool) -> Check {
    Check {
        name: "database",
        probe: Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                let client = pool
                    .get()
                    .await
                    .map_err(|err| anyhow::anyhow!("{}", crate::error_chain(&err)))?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .context("query failed")?;
                Ok(())
            })
        }),
    }
}

/// The broker answers a metadata request.
pub fn broker_check(producer: rdkafka::producer::FutureProducer) -> Check {
    Check {
        name: "broker",
        probe: Box::new(move || {
            let producer = producer.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(None, CHECK_TIMEOUT)
                        .map(drop)
                })
                .await?
                .context("no metadata from the broker")
            })
        }),
    }
}

/// The SMTP relay accepts a TCP connection.
pub fn smtp_check(host: String, port: u16) -> Check {
    Check {
        name: "smtp",
        probe: Box::new(move || {
            let address = (host.clone(), port);
            Box::pin(async move {
                tokio::net::TcpStream::connect(address)
                    .await
                    .context("connection refused")?;
                Ok(())
            })
        }),
    }
}
