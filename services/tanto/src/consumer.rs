//! The consume loop shared by the notifiers and the mailer.
//!
//! Messages are handled one at a time, in partition order. A message's
//! offset is stored only after its handler says the work is durable
//! ([`Handled::Done`]); librdkafka commits stored offsets in the background
//! and once more at shutdown. A crash therefore repeats work, never skips it.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{FutureProducer, Producer};

use crate::shutdown::Shutdown;

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The work is durable: store the offset and go on.
    Done,
    /// Shutdown came while the handler was waiting for a dependency; the
    /// message is not done and will be read again after a restart.
    Interrupted,
}

/// Handles one consumed message.
pub trait Handler {
    fn handle(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &Shutdown,
    ) -> impl Future<Output = anyhow::Result<Handled>>;
}

/// Consumes until shutdown, then flushes `producer` and commits.
pub async fn consume<H: Handler>(
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    handler: &H,
    shutdown: &Shutdown,
    deadline: Duration,
) -> anyhow::Result<()> {
    let result = consume_until_shutdown(consumer, handler, shutdown).await;
    close(consumer, producer, deadline);
    result
}

async fn consume_until_shutdown<H: Handler>(
    consumer: &StreamConsumer,
    handler: &H,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    loop {
        let received = tokio::select! {
            biased;
            _ = shutdown.wait() => return Ok(()),
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(err) => {
                // librdkafka reconnects by itself; its errors here are reports.
                tracing::warn!(error = %err, "Kafka consumer error");
                continue;
            }
        };
        match handler.handle(&message, shutdown).await? {
            Handled::Done => consumer.store_offset_from_message(&message)?,
            Handled::Interrupted => return Ok(()),
        }
        tracing::debug!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "message handled"
        );
    }
}

/// Flushes what the producer still holds (dropping it would purge it), then
/// commits the stored offsets so the next owner of the partitions starts
/// after the last finished message.
fn close(consumer: &StreamConsumer, producer: &FutureProducer, deadline: Duration) {
    if let Err(err) = producer.flush(deadline) {
        tracing::error!(error = %err, "producer flush failed at shutdown; unflushed messages will be produced again after restart");
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(err) => {
            tracing::warn!(error = %err, "final offset commit failed; some messages will be read again")
        }
    }
}

/// Runs `attempt` until it succeeds, waiting between failures with
/// [`backoff`]; `what` names the step in the log. Returns `None` if shutdown
/// came first. Only for steps that are safe to repeat.
pub async fn retry<T, F, Fut>(what: &str, shutdown: &Shutdown, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut failures = 0;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => {
                tracing::warn!(
                    step = what,
                    failures,
                    error = format!("{err:#}"),
                    "step failed; will retry"
                );
            }
        }
        if !backoff(failures, shutdown).await {
            return None;
        }
        failures += 1;
    }
}

/// Waits before the next attempt at a dependency that did not answer:
/// doubling from 100 ms up to 30 s. Returns false if shutdown came first.
pub async fn backoff(attempt: u32, shutdown: &Shutdown) -> bool {
    let delay = Duration::from_millis(100)
        .saturating_mul(2u32.saturating_pow(attempt.min(9)))
        .min(Duration::from_secs(30));
    tokio::select! {
        _ = shutdown.wait() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}
