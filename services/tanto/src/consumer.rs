//! The consume loop shared by the notifiers and the mailer.
//!
//! Messages are taken in batches and handled concurrently, except that
//! messages with the same key in the same partition are handled one after
//! the other, in offset order (events of one transaction stay in order).
//! An offset is stored only over the contiguous prefix of a partition's
//! messages whose handler said the work is durable ([`Handled::Done`]);
//! librdkafka commits stored offsets in the background and once more at
//! shutdown. A crash therefore repeats work, never skips it.
//!
//! While a batch waits on a dependency (a database that does not answer),
//! the loop pauses the assigned partitions and keeps polling, so the
//! consumer keeps its group membership; messages that were already fetched
//! are kept for the next batch, not lost.
//!
//! A handler may say that a message must wait ([`Handler::not_before`], used
//! by the mailer's retry tiers). The loop then holds that message's
//! partition: it seeks the partition back to the message, pauses it, keeps
//! polling the others, and resumes it at the due time, when the message is
//! read again. Later messages of a held partition wait behind it, which is
//! right for a topic written in due order.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::future::join_all;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// What became of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The work is durable: the offset may move past this message.
    Done,
    /// Shutdown came while the handler was waiting for a dependency; the
    /// message is not done and will be read again after a restart.
    Interrupted,
}

/// Handles one consumed message. Called concurrently for messages of
/// different keys, so it must be safe to run several at once.
pub trait Handler {
    fn handle(
        &self,
        message: &OwnedMessage,
        shutdown: &Shutdown,
    ) -> impl Future<Output = anyhow::Result<Handled>>;

    /// When `message` may be handled, if not at once. The loop holds it, and
    /// every later message of its partition, until then.
    fn not_before(&self, _message: &OwnedMessage) -> Option<SystemTime> {
        None
    }
}

/// How the loop groups messages.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// At most this many messages are handled at once.
    pub max_messages: usize,
    /// A batch waits at most this long for more messages once it has one.
    pub max_wait: Duration,
    /// A batch still running after this long pauses the partitions and
    /// polls, so that a long wait does not cost the group membership.
    pub keepalive_after: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_messages: 500,
            max_wait: Duration::from_millis(20),
            keepalive_after: Duration::from_secs(5),
        }
    }
}

/// Consumes until shutdown, then flushes `producer` and commits.
pub async fn consume<H: Handler>(
    consumer: &StreamConsumer,
    producer: &FutureProducer,
    handler: &H,
    shutdown: &Shutdown,
    batching: Batching,
    deadline: Duration,
) -> anyhow::Result<()> {
    let result = consume_until_shutdown(consumer, handler, shutdown, batching).await;
    close(consumer, producer, deadline);
    result
}

async fn consume_until_shutdown<H: Handler>(
    consumer: &StreamConsumer,
    handler: &H,
    shutdown: &Shutdown,
    batching: Batching,
) -> anyhow::Result<()> {
    let mut pending = Vec::new();
    let mut held = Held::default();
    loop {
        held.release_due(consumer);
        let batch = next_batch(consumer, &mut pending, &held, shutdown, batching).await;
        let Some(batch) = batch else {
            return Ok(());
        };
        let batch = held.hold_back(consumer, handler, batch)?;
        if batch.is_empty() {
            continue;
        }
        let outcomes =
            handle_keeping_alive(consumer, handler, &batch, &mut pending, shutdown, batching);
        let outcomes = outcomes.await?;
        // The keepalive resumes the whole assignment, held partitions too.
        held.pause_again(consumer);
        store_finished(consumer, &batch, &outcomes);
        if outcomes.contains(&Handled::Interrupted) {
            return Ok(());
        }
    }
}

/// Takes the next batch: messages kept from the last pause first, then
/// whatever arrives within `max_wait` of the first. `None` on shutdown; an
/// empty batch when a held partition is due before anything arrives.
async fn next_batch(
    consumer: &StreamConsumer,
    pending: &mut Vec<OwnedMessage>,
    held: &Held,
    shutdown: &Shutdown,
    batching: Batching,
) -> Option<Vec<OwnedMessage>> {
    let take = pending.len().min(batching.max_messages);
    let mut batch: Vec<OwnedMessage> = pending.drain(..take).collect();
    if batch.is_empty() {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return None,
            _ = held.next_release() => return Some(batch),
            message = receive(consumer) => batch.push(message),
        }
    }
    let deadline = Instant::now() + batching.max_wait;
    while batch.len() < batching.max_messages {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            message = receive(consumer) => batch.push(message),
        }
    }
    Some(batch)
}

/// The next message; consumer errors are reports (librdkafka reconnects by
/// itself), so they are logged and skipped.
async fn receive(consumer: &StreamConsumer) -> OwnedMessage {
    loop {
        match consumer.recv().await {
            Ok(message) => return message.detach(),
            Err(err) => tracing::warn!(error = %err, "Kafka consumer error"),
        }
    }
}

/// Handles a batch; if it takes longer than `keepalive_after`, pauses the
/// assignment and polls until it is done, keeping what arrives meanwhile.
async fn handle_keeping_alive<H: Handler>(
    consumer: &StreamConsumer,
    handler: &H,
    batch: &[OwnedMessage],
    pending: &mut Vec<OwnedMessage>,
    shutdown: &Shutdown,
    batching: Batching,
) -> anyhow::Result<Vec<Handled>> {
    let work = handle_batch(handler, batch, shutdown);
    tokio::pin!(work);
    let keepalive = tokio::time::sleep(batching.keepalive_after);
    tokio::pin!(keepalive);
    let mut paused = false;
    loop {
        tokio::select! {
            outcomes = &mut work => {
                if paused {
                    set_paused(consumer, false);
                }
                return outcomes;
            }
            _ = &mut keepalive, if !paused => paused = set_paused(consumer, true),
            message = receive(consumer), if paused => {
                pending.push(message);
                // A rebalance may have assigned partitions that are not paused.
                set_paused(consumer, true);
            }
        }
    }
}

/// Pauses or resumes the whole assignment; returns whether it is paused.
fn set_paused(consumer: &StreamConsumer, pause: bool) -> bool {
    let result = consumer.assignment().and_then(|assignment| {
        if pause {
            consumer.pause(&assignment)
        } else {
            consumer.resume(&assignment)
        }
    });
    if let Err(err) = result {
        tracing::warn!(error = %err, pause, "cannot pause or resume the assignment");
    }
    pause
}

/// Messages with the same topic, partition and key form one chain.
type ChainKey<'a> = (&'a str, i32, Option<&'a [u8]>);

/// Handles every message of a batch; one chain per (partition, key) runs
/// its messages in order, chains run concurrently. A chain stops at its
/// first interrupted message: the rest of it is interrupted too.
async fn handle_batch<H: Handler>(
    handler: &H,
    batch: &[OwnedMessage],
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<Handled>> {
    let mut chains: BTreeMap<ChainKey<'_>, Vec<usize>> = BTreeMap::new();
    for (index, message) in batch.iter().enumerate() {
        let chain = (message.topic(), message.partition(), message.key());
        chains.entry(chain).or_default().push(index);
    }
    let runs = chains.into_values().map(|indexes| async move {
        let mut outcomes = Vec::with_capacity(indexes.len());
        for index in indexes {
            let outcome = handler.handle(&batch[index], shutdown).await?;
            outcomes.push((index, outcome));
            if outcome == Handled::Interrupted {
                break;
            }
        }
        anyhow::Ok(outcomes)
    });
    let mut outcomes = vec![Handled::Interrupted; batch.len()];
    for run in join_all(runs).await {
        for (index, outcome) in run? {
            outcomes[index] = outcome;
        }
    }
    Ok(outcomes)
}

/// Stores, per partition, the offset of the last message of the contiguous
/// prefix of finished messages.
fn store_finished(consumer: &StreamConsumer, batch: &[OwnedMessage], outcomes: &[Handled]) {
    let mut partitions: BTreeMap<(&str, i32), Vec<(i64, Handled)>> = BTreeMap::new();
    for (message, outcome) in batch.iter().zip(outcomes) {
        let partition = partitions
            .entry((message.topic(), message.partition()))
            .or_default();
        partition.push((message.offset(), *outcome));
    }
    for ((topic, partition), mut offsets) in partitions {
        offsets.sort_unstable_by_key(|(offset, _)| *offset);
        let finished = offsets
            .iter()
            .take_while(|(_, outcome)| *outcome == Handled::Done)
            .last();
        if let Some((offset, _)) = finished {
            // librdkafka stores offset + 1: the next message to read.
            if let Err(err) = consumer.store_offset(topic, partition, *offset) {
                // The partition was revoked meanwhile; its new owner reads
                // these messages again and the deliveries are deduplicated.
                tracing::warn!(topic, partition, error = %err, "cannot store offset");
            }
        }
    }
}

/// Partitions held back until their first unhandled message is due.
#[derive(Debug, Default)]
struct Held {
    partitions: BTreeMap<(String, i32), Hold>,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    /// The message that is not due yet; the partition is read again from it.
    offset: i64,
    until: Instant,
}

impl Held {
    /// Takes out of `batch` every message that must wait: the first message
    /// of a partition that is not due, and everything after it in that
    /// partition. A message of a partition held already was fetched before
    /// the pause or after a resume by someone else; the partition is sought
    /// back again so that it is read again, not skipped.
    fn hold_back<H: Handler>(
        &mut self,
        consumer: &StreamConsumer,
        handler: &H,
        batch: Vec<OwnedMessage>,
    ) -> anyhow::Result<Vec<OwnedMessage>> {
        let mut ready = Vec::with_capacity(batch.len());
        let mut seek_again = BTreeSet::new();
        for message in batch {
            let partition = || (message.topic().to_string(), message.partition());
            if let Some(hold) = self.hold_of(&message) {
                if message.offset() >= hold.offset {
                    seek_again.insert(partition());
                    continue;
                }
            } else if let Some(left) = handler.not_before(&message).and_then(time_left) {
                tracing::debug!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    wait_ms = left.as_millis(),
                    "partition held until its next record is due"
                );
                let hold = Hold {
                    offset: message.offset(),
                    until: Instant::now() + left,
                };
                self.partitions.insert(partition(), hold);
                seek_again.insert(partition());
                continue;
            }
            ready.push(message);
        }
        for partition in seek_again {
            self.seek_back(consumer, &partition)?;
        }
        Ok(ready)
    }

    /// The hold of `message`'s partition, if it is held; found without
    /// building a key, since most consumers never hold anything.
    fn hold_of(&self, message: &OwnedMessage) -> Option<&Hold> {
        self.partitions
            .iter()
            .find(|((topic, partition), _)| {
                topic == message.topic() && *partition == message.partition()
            })
            .map(|(_, hold)| hold)
    }

    /// Pauses a held partition and moves its position back to the held
    /// message. If the partition was revoked meanwhile, its new owner reads
    /// it from the committed offset, which is not past the held message.
    fn seek_back(
        &self,
        consumer: &StreamConsumer,
        partition: &(String, i32),
    ) -> anyhow::Result<()> {
        let Some(hold) = self.partitions.get(partition) else {
            return Ok(());
        };
        let (topic, number) = (partition.0.as_str(), partition.1);
        let list = one_partition(topic, number);
        let result = consumer
            .pause(&list)
            .and_then(|()| consumer.seek(topic, number, Offset::Offset(hold.offset), SEEK_TIMEOUT));
        match result {
            Ok(()) => Ok(()),
            Err(_) if !is_assigned(consumer, topic, number) => Ok(()),
            // Reading on would skip the held message and, once a later offset
            // is stored, lose it: stopping is the safe way out.
            Err(err) => Err(err).with_context(|| {
                format!(
                    "Failed to hold back {topic} partition {number} at offset {}",
                    hold.offset
                )
            }),
        }
    }

    /// Pauses the held partitions again, after something resumed them.
    fn pause_again(&self, consumer: &StreamConsumer) {
        for (topic, number) in self.partitions.keys() {
            // A revoked partition cannot be paused; there is nothing to hold.
            let _ = consumer.pause(&one_partition(topic, *number));
        }
    }

    /// Resumes the partitions whose held message is due.
    fn release_due(&mut self, consumer: &StreamConsumer) {
        let now = Instant::now();
        self.partitions.retain(|(topic, number), hold| {
            if hold.until > now {
                return true;
            }
            // A revoked partition cannot be resumed; its new owner reads it.
            let _ = consumer.resume(&one_partition(topic, *number));
            false
        });
    }

    /// Resolves when the first held partition is due; never if none is held.
    async fn next_release(&self) {
        match self.partitions.values().map(|hold| hold.until).min() {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
    }
}

/// Bounds a seek, which librdkafka carries out on its own thread.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long until `time`, if it is in the future.
fn time_left(time: SystemTime) -> Option<Duration> {
    time.duration_since(SystemTime::now())
        .ok()
        .filter(|left| !left.is_zero())
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

fn is_assigned(consumer: &StreamConsumer, topic: &str, partition: i32) -> bool {
    consumer
        .assignment()
        .is_ok_and(|assignment| assignment.find_partition(topic, partition).is_some())
}

/// Flushes what the producer still holds (dropping it would purge it), then
/// commits the stored offsets so the next owner of the partitions starts
/// after the last finished message.
fn close(consumer: &StreamConsumer, producer: &FutureProducer, deadline: Duration) {
    if let Err(err) = producer.flush(deadline) {
        tracing::error!(error = %err, "producer flush failed at shutdown; the messages of unfinished work will be produced again after restart");
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
