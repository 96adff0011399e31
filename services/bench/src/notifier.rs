//! The notifier against its ceiling: a bare rdkafka loop that consumes the
//! same events and produces the same number of messages per event, with
//! no lookup, on the same broker, with the same producer settings.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::setup::{self, BROKERS, BenchEnv, DELIVERIES_PER_EVENT, Scrape, Usage};

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub events_per_second: f64,
    pub usage: Usage,
    /// Mean routing time per event, from the notifier's own histogram.
    pub mean_routing: Duration,
    /// Where the notifier's wall time went, from its own histograms.
    pub breakdown: Breakdown,
}

/// A notifier run's wall time, and the parts of it its histograms measure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Breakdown {
    pub elapsed: Duration,
    pub routing: Duration,
    pub recording: Duration,
}

const TIMEOUT: Duration = Duration::from_secs(600);

/// Runs the real notifier (release build) over `events` events.
pub async fn notifier(env: &BenchEnv, events: usize) -> anyhow::Result<Run> {
    setup::publish(&env.topics.orders, &setup::events(events)).await?;
    let port = free_port()?;
    let process = env.spawn(
        "order-notifier",
        &[("TANTO_HTTP_ADDR", format!("127.0.0.1:{port}"))],
    )?;
    let target = events as i64 * DELIVERIES_PER_EVENT;
    let topic = env.topics.deliveries.clone();
    let elapsed =
        tokio::task::spawn_blocking(move || setup::time_growth(&topic, target, TIMEOUT)).await??;
    let scrape = Scrape::of(port).await?;
    let usage = process.stop()?;
    let seconds = |series: &str| Duration::from_secs_f64(scrape.sum(series));
    let count = scrape.sum("tanto_routing_duration_seconds_count").max(1.0);
    let breakdown = Breakdown {
        elapsed,
        routing: seconds("tanto_routing_duration_seconds_sum"),
        recording: seconds("tanto_db_query_duration_seconds_sum{query=\"record_routed_events\"}"),
    };
    Ok(Run {
        events_per_second: events as f64 / elapsed.as_secs_f64(),
        usage,
        mean_routing: breakdown.routing.div_f64(count),
        breakdown,
    })
}

/// Runs the bare loop over `events` events, in a thread of this process.
pub async fn ceiling(env: &BenchEnv, events: usize, payload_size: usize) -> anyhow::Result<Run> {
    setup::publish(&env.topics.orders, &setup::events(events)).await?;
    let (source, sink) = (env.topics.orders.clone(), env.topics.deliveries.clone());
    let group = format!("{}-ceiling", env.id);
    let target = events as i64 * DELIVERIES_PER_EVENT;
    let looping =
        std::thread::spawn(move || bare_loop(&source, &sink, &group, events, payload_size));
    let topic = env.topics.deliveries.clone();
    let elapsed =
        tokio::task::spawn_blocking(move || setup::time_growth(&topic, target, TIMEOUT)).await??;
    let usage = looping
        .join()
        .map_err(|_| anyhow::anyhow!("the bare loop panicked"))??;
    Ok(Run {
        events_per_second: events as f64 / elapsed.as_secs_f64(),
        usage,
        mean_routing: Duration::ZERO,
        breakdown: Breakdown::default(),
    })
}

/// Consume, produce `DELIVERIES_PER_EVENT` messages per event, nothing else.
fn bare_loop(
    source: &str,
    sink: &str,
    group: &str,
    events: usize,
    size: usize,
) -> anyhow::Result<Usage> {
    let started = thread_cpu();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[source])?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let payload = vec![b'x'; size];
    let mut consumed = 0;
    while consumed < events {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let key = message?.key().unwrap_or_default().to_vec();
        for _ in 0..DELIVERIES_PER_EVENT {
            let mut record = BaseRecord::to(sink).key(&key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((err, returned))
                        if err.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(5));
                        record = returned;
                    }
                    Err((err, _)) => return Err(err.into()),
                }
            }
        }
        consumed += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(Usage {
        cpu: thread_cpu().saturating_sub(started),
        peak_rss_bytes: 0,
    })
}

/// CPU time of this whole process so far (the bare loop's threads, the
/// client's threads, and the bench's polling, which is small).
fn thread_cpu() -> Duration {
    setup::usage_of(std::process::id())
        .map(|u| u.cpu)
        .unwrap_or_default()
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
