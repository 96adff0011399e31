//! The watchdog notices a consumer that silently stopped fetching while
//! messages wait, and replaces it; the new consumer handles every message.
//!
//! The stuck consumer is made for real: it fetches one message from the
//! broker, then its partitions are paused, which is what a silently stopped
//! consumer looks like from the outside (messages waiting, none arriving).

// A test fails loudly on anything unexpected; unwrap is how it says so.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tanto::consumer::{Batching, Handled, Handler, LagContext, TantoConsumer, consume};
use tanto::shutdown::Shutdown;
use tanto_e2e::{TestEnv, eventually, publish_raw};

const BROKERS: &str = "127.0.0.1:9092";

#[derive(Default)]
struct Recorder {
    seen: Mutex<BTreeSet<(i32, i64)>>,
}

impl Handler for Recorder {
    async fn handle(&self, message: &OwnedMessage, _: &Shutdown) -> anyhow::Result<Handled> {
        self.seen
            .lock()
            .unwrap()
            .insert((message.partition(), message.offset()));
        Ok(Handled::Done)
    }
}

/// A consumer of `group` that took one message of `topic` and then stopped.
fn stuck_consumer(group: &str, topic: &str) -> TantoConsumer {
    let consumer: TantoConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .set("enable.auto.offset.store", "false")
        .set("statistics.interval.ms", "500")
        .create_with_context(LagContext::default())
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..2 {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| runtime.block_on(consumer.recv())).unwrap();
    consumer.pause(&assignment).unwrap();
    consumer
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_stops_fetching_while_messages_wait_is_replaced() {
    let env = TestEnv::new().await;
    let topic = env.topics.orders.clone();
    for i in 0..20 {
        publish_raw(&topic, &format!("key-{i}"), b"{}").await;
    }
    let group = format!("{}-watchdog", env.id);
    let connects = AtomicU32::new(0);
    let connect = || {
        if connects.fetch_add(1, Ordering::SeqCst) == 0 {
            return Ok(stuck_consumer(&group, &topic));
        }
        tanto::kafka::consumer(BROKERS, &group, &[&topic], LagContext::default())
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let recorder = Recorder::default();
    let shutdown = Shutdown::new();
    let batching = Batching {
        stall_after: Duration::from_secs(3),
        ..Batching::default()
    };

    let consuming = consume(
        connect,
        &producer,
        &recorder,
        &shutdown,
        batching,
        Duration::from_secs(5),
    );
    let watching = async {
        eventually(
            "all 20 messages handled",
            Duration::from_secs(60),
            || async { recorder.seen.lock().unwrap().len() == 20 },
        )
        .await;
        shutdown.trigger();
    };
    let (restarts, ()) = tokio::join!(consuming, watching);

    assert_eq!(restarts.unwrap(), 1, "the stuck consumer was replaced once");
    assert_eq!(connects.load(Ordering::SeqCst), 2);
}
