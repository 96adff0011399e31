//! Kafka clients configured the one way tanto uses them, topic creation, and
//! the dead-letter record format.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::consumer::{LagContext, TantoConsumer};

/// A consumer for at-least-once work, subscribed to `topics`: offsets are
/// stored by the code only once the work for a message is durable, and
/// committed in the background (and once more at shutdown). Statistics
/// every second feed the consumer lag into `context`.
pub fn consumer(
    brokers: &str,
    group: &str,
    topics: &[&str],
    context: LagContext,
) -> anyhow::Result<TantoConsumer> {
    let consumer: TantoConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "1000")
        .create_with_context(context)
        .context("Failed to create the Kafka consumer")?;
    consumer
        .subscribe(topics)
        .with_context(|| format!("Failed to subscribe to {topics:?}"))?;
    Ok(consumer)
}

/// An idempotent producer: a broker-side retry never writes a message twice,
/// and a send is acknowledged only once every in-sync replica has it.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .context("Failed to create the Kafka producer")
}

/// Creates the topics that do not exist yet; an existing topic is left as it
/// is. Returns the names of the topics created.
pub async fn ensure_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Failed to create the Kafka admin client")?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .with_context(|| format!("Failed to reach the Kafka broker at {brokers}"))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("Failed to create topic {name}: {code}"),
        }
    }
    Ok(created)
}

/// The headers of a dead-letter record. The payload of the record is the
/// original one, byte for byte; everything tanto adds is in headers, so an
/// operator can replay the record as it is.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterHeaders {
    pairs: Vec<(&'static str, String)>,
}

impl DeadLetterHeaders {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, key: &'static str, value: impl ToString) -> Self {
        self.pairs.push((key, value.to_string()));
        self
    }

    pub fn to_kafka(&self) -> OwnedHeaders {
        self.pairs
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(value.as_str()),
                })
            })
    }
}

/// Reads a header as UTF-8 text, for tests and the operator CLI.
pub fn header_text<H: Headers>(headers: &H, key: &str) -> Option<String> {
    headers
        .iter()
        .find(|header| header.key == key)
        .and_then(|header| header.value)
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// A producer for the operator CLI: idempotent like [`producer`], but a send
/// that the broker does not acknowledge fails after `timeout` instead of
/// librdkafka's five minutes, so a command never hangs on a broker outage.
pub fn operator_producer(brokers: &str, timeout: Duration) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create()
        .context("Failed to create the Kafka producer")
}

/// Reads every message `topic` holds when the call starts, from the beginning
/// of each partition up to its high watermark, and hands each to `visit` in
/// partition and offset order within a partition. Messages that arrive during
/// the read are left for the next one. Blocking: call it off the runtime's
/// worker threads (`spawn_blocking`). Joins no consumer group and commits
/// nothing.
pub fn read_to_end(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut visit: impl FnMut(OwnedMessage),
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tanto-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("Failed to create the Kafka consumer")?;
    let unreachable = || format!("the Kafka broker at {brokers} does not answer");
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(unreachable)?;
    let partitions = match metadata.topics().first() {
        Some(found) if found.error().is_none() => found.partitions(),
        _ => anyhow::bail!("topic {topic} does not exist (`tanto topics ensure` creates it)"),
    };
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition.id(), timeout)
            .with_context(unreachable)?;
        if high > low {
            ends.insert(partition.id(), high);
            assignment.add_partition_offset(topic, partition.id(), Offset::Offset(low))?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("Failed to read {topic}"))?;
    let deadline = Instant::now() + timeout;
    while !ends.is_empty() {
        if Instant::now() > deadline {
            anyhow::bail!("reading {topic} took longer than {timeout:?}; try again");
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        // The end of a partition can come before its high watermark when
        // the last offsets hold no message (transaction markers).
        let message = match message {
            Err(KafkaError::PartitionEOF(partition)) => {
                ends.remove(&partition);
                continue;
            }
            other => other.with_context(|| format!("Failed to read {topic}"))?,
        };
        let (partition, offset) = (message.partition(), message.offset());
        let Some(&end) = ends.get(&partition) else {
            continue;
        };
        if offset < end {
            visit(message.detach());
        }
        if offset + 1 >= end {
            ends.remove(&partition);
        }
    }
    Ok(())
}

/// The number of records `topic` holds now, summed over its partitions.
/// Blocking: it asks the broker for metadata and watermarks.
pub fn topic_size<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> anyhow::Result<i64> {
    let timeout = Duration::from_secs(5);
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let mut size = 0;
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = client.fetch_watermarks(topic, partition.id(), timeout)?;
        size += high - low;
    }
    Ok(size)
}
