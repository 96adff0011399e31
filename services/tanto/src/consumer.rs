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
//!
//! A consumer that silently stops fetching is a known failure of the client
//! library. A watchdog compares progress with the lag librdkafka reports in
//! its statistics: no message for `stall_after` while messages are waiting
//! means the consumer is stuck, and it is replaced by a new one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;

use futures::future::join_all;
use rdkafka::Message;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::statistics::Statistics;
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

    /// Handles a whole batch, one outcome per message in batch order. The
    /// default runs [`Handler::handle`] in chains; a handler that can do a
    /// batch's work in one go (the notifier routes a batch with three
    /// queries) overrides it.
    fn handle_batch(
        &self,
        batch: &[OwnedMessage],
        shutdown: &Shutdown,
    ) -> impl Future<Output = anyhow::Result<Vec<Handled>>> {
        handle_in_chains(self, batch, shutdown)
    }

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
    /// No message for this long while the lag says messages are waiting
    /// makes the watchdog replace the consumer.
    pub stall_after: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_messages: 500,
            max_wait: Duration::from_millis(20),
            keepalive_after: Duration::from_secs(5),
            stall_after: Duration::from_secs(60),
        }
    }
}

/// A consumer whose statistics feed a [`LagView`].
pub type TantoConsumer = StreamConsumer<LagContext>;

/// The consumer lag per partition, as librdkafka's last statistics said.
#[derive(Debug, Clone, Default)]
pub struct LagView(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl LagView {
    /// Messages waiting in all assigned partitions.
    pub fn total(&self) -> i64 {
        self.total_except(|_, _| false)
    }

    /// Messages waiting in the assigned partitions that `skip` does not
    /// name.
    pub fn total_except(&self, skip: impl Fn(&str, i32) -> bool) -> i64 {
        let Ok(lag) = self.0.lock() else { return 0 };
        lag.iter()
            .filter(|((topic, partition), _)| !skip(topic, *partition))
            .map(|(_, lag)| lag)
            .sum()
    }

    /// (topic, partition, lag) of every assigned partition, sorted.
    pub fn partitions(&self) -> Vec<(String, i32, i64)> {
        let mut all: Vec<(String, i32, i64)> = match self.0.lock() {
            Ok(lag) => lag
                .iter()
                .map(|((t, p), lag)| (t.clone(), *p, *lag))
                .collect(),
            Err(_) => Vec::new(),
        };
        all.sort();
        all
    }

    fn update(&self, statistics: &Statistics) {
        let mut lags = HashMap::new();
        for (topic, stats) in &statistics.topics {
            for partition in stats
                .partitions
                .values()
                .filter(|p| p.partition >= 0 && p.desired)
            {
                lags.insert(
                    (topic.clone(), partition.partition),
                    partition_lag(partition),
                );
            }
        }
        let gauge = &crate::metrics::metrics().consumer_lag;
        gauge.reset();
        for ((topic, partition), lag) in &lags {
            gauge
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(*lag);
        }
        if let Ok(mut lag) = self.0.lock() {
            *lag = lags;
        }
    }
}

/// Messages after the consumer's position: from the last message handed to
/// the application, else the committed offset, else the start of the log
/// (the group reads from the earliest offset).
fn partition_lag(partition: &rdkafka::statistics::Partition) -> i64 {
    let position = [partition.app_offset, partition.committed_offset]
        .into_iter()
        .find(|offset| *offset >= 0)
        .unwrap_or(partition.lo_offset);
    if partition.hi_offset < 0 || position < 0 {
        return 0;
    }
    (partition.hi_offset - position).max(0)
}

/// The consumer context: it keeps the [`LagView`] up to date.
#[derive(Debug, Clone, Default)]
pub struct LagContext {
    pub lag: LagView,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.update(&statistics);
    }
}

impl ConsumerContext for LagContext {}

/// How one consumer's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Shutdown,
    /// The watchdog saw no progress while messages were waiting.
    Stalled,
}

/// Consumes with consumers made by `connect` until shutdown, replacing a
/// consumer the watchdog finds stuck; then flushes `producer` and commits.
/// Returns how many times the watchdog replaced a consumer.
pub async fn consume<H: Handler>(
    connect: impl Fn() -> anyhow::Result<TantoConsumer>,
    producer: &FutureProducer,
    handler: &H,
    shutdown: &Shutdown,
    batching: Batching,
    deadline: Duration,
) -> anyhow::Result<u32> {
    let mut restarts = 0;
    let result = loop {
        let consumer = match connect() {
            Ok(consumer) => consumer,
            Err(err) => break Err(err),
        };
        let ended = consume_until_stopped(&consumer, handler, shutdown, batching).await;
        close(&consumer);
        match ended {
            Ok(Ended::Stalled) => {
                restarts += 1;
                let topics = consumer.subscription().map(|list| {
                    list.elements()
                        .iter()
                        .map(|e| e.topic().to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                let topics = topics.unwrap_or_default();
                crate::metrics::metrics()
                    .watchdog_restarts
                    .with_label_values(&[&topics])
                    .inc();
                let lag = consumer.context().lag.total();
                tracing::error!(
                    lag,
                    restarts,
                    stalled_for = ?batching.stall_after,
                    "consumer stalled while messages waited; replacing it"
                );
            }
            Ok(Ended::Shutdown) => break Ok(restarts),
            Err(err) => break Err(err),
        }
    };
    if let Err(err) = producer.flush(deadline) {
        tracing::error!(
            error = %err,
            "producer flush failed at shutdown; unfinished work is redone after restart"
        );
    }
    result
}

async fn consume_until_stopped<H: Handler>(
    consumer: &TantoConsumer,
    handler: &H,
    shutdown: &Shutdown,
    batching: Batching,
) -> anyhow::Result<Ended> {
    let mut pending = Vec::new();
    let mut watchdog = Watchdog::new(batching.stall_after);
    let mut held = Held::default();
    loop {
        held.release_due(consumer);
        let waiting = Waiting {
            shutdown,
            held: &held,
            watchdog: &mut watchdog,
        };
        let batch = match next_batch(consumer, &mut pending, waiting, batching).await {
            Ok(batch) => batch,
            Err(ended) => return Ok(ended),
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
            return Ok(Ended::Shutdown);
        }
    }
}

/// Notices a consumer that stopped fetching: no message for `stall_after`
/// while the lag says messages are waiting. Idle time without lag is not a
/// stall.
#[derive(Debug)]
pub struct Watchdog {
    stall_after: Duration,
    last_progress: Instant,
}

impl Watchdog {
    pub fn new(stall_after: Duration) -> Self {
        Self {
            stall_after,
            last_progress: Instant::now(),
        }
    }

    pub fn progress(&mut self) {
        self.last_progress = Instant::now();
    }

    /// Whether the consumer is stuck, given the messages waiting now.
    pub fn stalled(&mut self, lag: i64) -> bool {
        if lag <= 0 {
            self.progress();
            return false;
        }
        self.last_progress.elapsed() >= self.stall_after
    }
}

/// What the wait for a batch's first message watches besides the broker.
struct Waiting<'a> {
    shutdown: &'a Shutdown,
    held: &'a Held,
    watchdog: &'a mut Watchdog,
}

/// Takes the next batch: messages kept from the last pause first, then
/// whatever arrives within `max_wait` of the first. While it waits for the
/// first message, it asks the watchdog; it ends on shutdown or a stall. An
/// empty batch means a held partition is due before anything arrived.
async fn next_batch(
    consumer: &TantoConsumer,
    pending: &mut Vec<OwnedMessage>,
    waiting: Waiting<'_>,
    batching: Batching,
) -> Result<Vec<OwnedMessage>, Ended> {
    let Waiting {
        shutdown,
        held,
        watchdog,
    } = waiting;
    let take = pending.len().min(batching.max_messages);
    let mut batch: Vec<OwnedMessage> = pending.drain(..take).collect();
    let every = batching
        .stall_after
        .div_f32(4.0)
        .max(Duration::from_millis(100));
    let mut check = tokio::time::interval(every);
    while batch.is_empty() {
        tokio::select! {
            biased;
            _ = shutdown.wait() => return Err(Ended::Shutdown),
            _ = held.next_release() => return Ok(batch),
            message = receive(consumer) => batch.push(message),
            _ = check.tick() => {
                // A held partition has messages waiting on purpose.
                let lag = consumer.context().lag.total_except(|t, p| held.holds(t, p));
                if watchdog.stalled(lag) {
                    return Err(Ended::Stalled);
                }
            }
        }
    }
    watchdog.progress();
    let deadline = Instant::now() + batching.max_wait;
    while batch.len() < batching.max_messages {
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep_until(deadline) => break,
            message = receive(consumer) => batch.push(message),
        }
    }
    Ok(batch)
}

/// The next message; consumer errors are reports (librdkafka reconnects by
/// itself), so they are logged and skipped.
async fn receive(consumer: &TantoConsumer) -> OwnedMessage {
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
    consumer: &TantoConsumer,
    handler: &H,
    batch: &[OwnedMessage],
    pending: &mut Vec<OwnedMessage>,
    shutdown: &Shutdown,
    batching: Batching,
) -> anyhow::Result<Vec<Handled>> {
    let work = handler.handle_batch(batch, shutdown);
    tokio::pin!(work);
    let keepalive = tokio::time::sleep(batching.keepalive_after);
    tokio::pin!(keepalive);
    let mut paused = false;
    loop {
        tokio::select! {
            outcomes = &mut work => {
                if paused {
                    tracing::info!("batch done; partitions resumed");
                    set_paused(consumer, false);
                }
                return outcomes;
            }
            _ = &mut keepalive, if !paused => {
                tracing::info!(
                    waited = ?batching.keepalive_after,
                    "batch waits on a dependency; partitions paused, polling on"
                );
                paused = set_paused(consumer, true);
            }
            message = receive(consumer), if paused => {
                pending.push(message);
                // A rebalance may have assigned partitions that are not paused.
                set_paused(consumer, true);
            }
        }
    }
}

/// Pauses or resumes the whole assignment; returns whether it is paused.
fn set_paused(consumer: &TantoConsumer, pause: bool) -> bool {
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
pub async fn handle_in_chains<H: Handler + ?Sized>(
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
fn store_finished(consumer: &TantoConsumer, batch: &[OwnedMessage], outcomes: &[Handled]) {
    let positions = batch.iter().map(|m| (m.topic(), m.partition(), m.offset()));
    for (topic, partition, offset) in finished_prefixes(positions.zip(outcomes.iter().copied())) {
        // librdkafka stores offset + 1: the next message to read.
        if let Err(err) = consumer.store_offset(topic, partition, offset) {
            // The partition was revoked meanwhile; its new owner reads
            // these messages again and the deliveries are deduplicated.
            tracing::warn!(topic, partition, error = %err, "cannot store offset");
        }
    }
}

/// For each partition, the offset of the last message before the first one
/// not done: everything up to it may be committed, nothing after it.
fn finished_prefixes<'a>(
    outcomes: impl Iterator<Item = ((&'a str, i32, i64), Handled)>,
) -> Vec<(&'a str, i32, i64)> {
    let mut partitions: BTreeMap<(&str, i32), Vec<(i64, Handled)>> = BTreeMap::new();
    for ((topic, partition, offset), outcome) in outcomes {
        partitions
            .entry((topic, partition))
            .or_default()
            .push((offset, outcome));
    }
    let mut finished = Vec::new();
    for ((topic, partition), mut offsets) in partitions {
        offsets.sort_unstable_by_key(|(offset, _)| *offset);
        let done = offsets
            .iter()
            .take_while(|(_, outcome)| *outcome == Handled::Done)
            .last();
        if let Some((offset, _)) = done {
            finished.push((topic, partition, *offset));
        }
    }
    finished
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
        consumer: &TantoConsumer,
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
    fn seek_back(&self, consumer: &TantoConsumer, partition: &(String, i32)) -> anyhow::Result<()> {
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
    fn pause_again(&self, consumer: &TantoConsumer) {
        for (topic, number) in self.partitions.keys() {
            // A revoked partition cannot be paused; there is nothing to hold.
            let _ = consumer.pause(&one_partition(topic, *number));
        }
    }

    /// Resumes the partitions whose held message is due.
    fn release_due(&mut self, consumer: &TantoConsumer) {
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

    /// Whether a partition is held.
    fn holds(&self, topic: &str, partition: i32) -> bool {
        self.partitions
            .keys()
            .any(|(t, p)| t == topic && *p == partition)
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

fn is_assigned(consumer: &TantoConsumer, topic: &str, partition: i32) -> bool {
    consumer
        .assignment()
        .is_ok_and(|assignment| assignment.find_partition(topic, partition).is_some())
}

/// Commits the stored offsets so the next owner of the partitions starts
/// after the last finished message; dropping the consumer then leaves the
/// group.
fn close(consumer: &TantoConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(err) => {
            tracing::warn!(error = %err, "final commit failed; some messages will be read again")
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

#[cfg(test)]
mod tests {
    use super::*;
    use Handled::{Done, Interrupted};

    #[test]
    fn offsets_move_only_over_the_contiguous_prefix_of_finished_messages() {
        let outcomes = [
            (("t", 0, 12), Done),
            (("t", 0, 10), Done),
            (("t", 0, 11), Interrupted),
            (("t", 1, 5), Done),
            (("t", 1, 6), Done),
            (("t", 2, 7), Interrupted),
            (("u", 0, 3), Done),
        ];
        assert_eq!(
            finished_prefixes(outcomes.into_iter()),
            [("t", 0, 10), ("t", 1, 6), ("u", 0, 3)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_only_on_lag_without_progress() {
        let mut watchdog = Watchdog::new(Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(!watchdog.stalled(0), "idle without lag is not a stall");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!watchdog.stalled(5));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(watchdog.stalled(5));
        watchdog.progress();
        assert!(!watchdog.stalled(5));
    }
}
