//! One shutdown signal shared by every binary and every test.
//!
//! A [`Shutdown`] is cheap to clone. Binaries trigger it from SIGTERM or
//! SIGINT; tests trigger it by hand, so a worker's whole shutdown path runs
//! under test.

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            sender: watch::channel(false).0,
        }
    }

    /// Asks every holder to stop; idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = receiver.wait_for(|stopped| *stopped).await;
    }

    /// Triggers on the first SIGTERM or SIGINT.
    pub fn on_signals(&self) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let shutdown = self.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown requested");
            shutdown.trigger();
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_a_trigger_made_before_or_after_they_wait() {
        let shutdown = Shutdown::new();
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.wait().await }
        });
        shutdown.trigger();
        waiter.await.expect("waiter");
        shutdown.wait().await;
        assert!(shutdown.is_triggered());
    }
}
