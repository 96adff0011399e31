//! The notifier: reads one family's transaction events and writes one
//! delivery message per (event, mail, recipient address) to the delivery
//! topic.
//!
//! Delivery guarantee: at least once, exactly once in effect. An event's
//! offset is stored only after every delivery message it produced (or its
//! dead-letter record) is acknowledged by Kafka and the event is recorded in
//! `routed_events`, so a crash at any moment routes the event again rather
//! than losing it. Routing again yields the same deterministic
//! `delivery_id`s, which the mailer uses to drop repeats.
//! Events of one partition are handled in order, one at a time.
//!
//! An event that cannot be routed (malformed, schema violation, unknown
//! type, wrong topic, unknown tenant) goes to the event dead-letter topic
//! with its reason, and the partition moves on. A database that does not
//! answer is not the event's fault: the notifier waits and tries again.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use futures::future::try_join_all;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::consumer::{self, Batching, Handled, Handler};
use crate::delivery::DeliveryMessage;
use crate::event::{self, Event, Family, RejectReason, Rejection};
use crate::http;
use crate::kafka::{self, DeadLetterHeaders};
use crate::metrics::metrics;
use crate::routing::{Routed, Router, record};
use crate::shutdown::Shutdown;

/// How often the dead letters waiting are counted: often enough for an
/// alert, rarely enough that the count costs nothing.
const DEAD_LETTER_COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// How long a produce may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the notifier of `family` until `shutdown`.
pub async fn run(settings: &Settings, family: Family, shutdown: Shutdown) -> anyhow::Result<()> {
    let topics = &settings.kafka.topics;
    let source = match family {
        Family::Order => &topics.orders,
        Family::Contract => &topics.contracts,
        Family::Quote => &topics.quotes,
    };
    let catalog = Catalog::load(&settings.mail.catalog)?;
    metrics().init_notifier(source, &catalog, family);
    let notifier = Notifier {
        family,
        router: Router::new(crate::db::pool(&settings.database)?, catalog),
        producer: kafka::producer(&settings.kafka.brokers)?,
        deliveries_topic: topics.deliveries.clone(),
        dead_letter_topic: topics.events_dlq.clone(),
    };
    serve_http(settings, family, &notifier, &shutdown).await?;
    let consuming = async {
        let consumed = consume(settings, family, source, &notifier, &shutdown).await;
        // The dead-letter count below runs until shutdown; so must an error.
        shutdown.trigger();
        consumed
    };
    let (consumed, ()) = tokio::join!(consuming, count_dead_letters(&notifier, shutdown.clone()));
    consumed
}

/// `/metrics`, `/healthz`, and `/readyz` checking the database and broker,
/// on the family's own default port.
async fn serve_http(
    settings: &Settings,
    family: Family,
    notifier: &Notifier,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let checks = vec![
        http::database_check(notifier.router.pool().clone()),
        http::broker_check(notifier.producer.clone()),
    ];
    let port = match family {
        Family::Order => 9101,
        Family::Contract => 9102,
        Family::Quote => 9103,
    };
    let addr = settings
        .http_addr
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], port)));
    http::spawn(addr, checks, shutdown.clone()).await
}

/// Consumes `source` until shutdown, replacing a stuck consumer.
async fn consume(
    settings: &Settings,
    family: Family,
    source: &str,
    notifier: &Notifier,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let group = settings
        .kafka
        .consumer_group
        .clone()
        .unwrap_or_else(|| default_group(family));
    let connect = || {
        let consumer = kafka::consumer(
            &settings.kafka.brokers,
            &group,
            &[source],
            Default::default(),
        )?;
        tracing::info!(topic = %source, group = %group, "notifier ready");
        Ok(consumer)
    };
    let batching = Batching {
        stall_after: settings.watchdog_stall,
        ..Batching::default()
    };
    let deadline = settings.shutdown_deadline;
    consumer::consume(
        connect,
        &notifier.producer,
        notifier,
        shutdown,
        batching,
        deadline,
    )
    .await?;
    Ok(())
}

/// Keeps `tanto_dead_letters_waiting{kind="events"}` at the number of
/// records on the event dead-letter topic that no operator has replayed,
/// every ten seconds. Every notifier reports the same topic.
async fn count_dead_letters(notifier: &Notifier, shutdown: Shutdown) {
    loop {
        match dead_letters_waiting(notifier).await {
            Ok(waiting) => metrics()
                .dead_letters_waiting
                .with_label_values(&["events"])
                .set(waiting),
            Err(err) => tracing::debug!(error = format!("{err:#}"), "cannot count dead letters"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(DEAD_LETTER_COUNT_INTERVAL) => {}
        }
    }
}

async fn dead_letters_waiting(notifier: &Notifier) -> anyhow::Result<i64> {
    let topic = notifier.dead_letter_topic.clone();
    let producer = notifier.producer.clone();
    let on_topic =
        tokio::task::spawn_blocking(move || kafka::topic_size(producer.client(), &topic));
    let client = notifier.router.pool().get().await?;
    let replayed = client
        .query_one(
            "SELECT count(DISTINCT (dead_letter_partition, dead_letter_offset))
             FROM replayed_records WHERE dead_letter_topic = $1",
            &[&notifier.dead_letter_topic],
        )
        .await?;
    Ok((on_topic.await?? - replayed.get::<_, i64>(0)).max(0))
}

/// The consumer group of a family's notifier unless configured otherwise.
pub fn default_group(family: Family) -> String {
    format!("tanto-{family}-notifier")
}

struct Notifier {
    family: Family,
    router: Router,
    producer: FutureProducer,
    deliveries_topic: String,
    dead_letter_topic: String,
}

impl Handler for Notifier {
    async fn handle(&self, message: &OwnedMessage, shutdown: &Shutdown) -> anyhow::Result<Handled> {
        let handled = self
            .handle_batch(std::slice::from_ref(message), shutdown)
            .await?;
        Ok(handled[0])
    }

    /// Routes the batch's events with three queries, publishes their
    /// deliveries and sets the unroutable ones aside; a failure of the
    /// database or the broker retries the whole step (safe: the delivery
    /// ids are the same each time) until it passes or shutdown comes.
    async fn handle_batch(
        &self,
        batch: &[OwnedMessage],
        shutdown: &Shutdown,
    ) -> anyhow::Result<Vec<Handled>> {
        let parsed: Vec<Result<Event, Rejection>> = batch
            .iter()
            .map(|message| event::parse(message.payload().unwrap_or_default(), self.family))
            .collect();
        let step = consumer::retry("route events", shutdown, || {
            self.route_batch(batch, &parsed)
        });
        let Some(outcomes) = step.await else {
            return Ok(vec![Handled::Interrupted; batch.len()]);
        };
        for ((message, parsed), outcome) in batch.iter().zip(&parsed).zip(&outcomes) {
            count(message.topic(), parsed, outcome);
        }
        Ok(vec![Handled::Done; batch.len()])
    }
}

/// What the notifier did with an event, for the metrics.
enum Outcome {
    Routed(Routed),
    SetAside(RejectReason),
}

impl Notifier {
    /// One attempt at a batch: route, then publish deliveries and dead
    /// letters together, then record the routing.
    async fn route_batch(
        &self,
        batch: &[OwnedMessage],
        parsed: &[Result<Event, Rejection>],
    ) -> anyhow::Result<Vec<Outcome>> {
        let events: Vec<&Event> = parsed.iter().filter_map(|p| p.as_ref().ok()).collect();
        let routed = self.route_timed(&events).await?;
        let mut routed = routed.into_iter();
        let results: Vec<Result<Routed, Rejection>> = parsed
            .iter()
            .map(|parsed| match parsed {
                Ok(_) => routed.next().expect("one routing result per parsed event"),
                Err(rejection) => Err(rejection.clone()),
            })
            .collect();
        let deliveries: Vec<&DeliveryMessage> = results
            .iter()
            .flatten()
            .flat_map(|routed| &routed.deliveries)
            .collect();
        let dead_letters = batch.iter().zip(&results).filter_map(|(message, result)| {
            result
                .as_ref()
                .err()
                .map(|rejection| self.dead_letter(message, rejection))
        });
        tokio::try_join!(self.publish(&deliveries), try_join_all(dead_letters))?;
        self.record(parsed, &results).await?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                Ok(routed) => Outcome::Routed(routed),
                Err(rejection) => Outcome::SetAside(rejection.reason),
            })
            .collect())
    }

    /// Routes the events and observes the routing time per event.
    async fn route_timed(
        &self,
        events: &[&Event],
    ) -> anyhow::Result<Vec<Result<Routed, Rejection>>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let started = std::time::Instant::now();
        let routed = self.router.route_batch(events).await?;
        let per_event = started.elapsed().as_secs_f64() / events.len() as f64;
        for (event, result) in events.iter().zip(&routed) {
            metrics().routing_duration.observe(per_event);
            if let Ok(routed) = result {
                log_routed(event, routed);
            }
        }
        Ok(routed)
    }

    async fn record(
        &self,
        parsed: &[Result<Event, Rejection>],
        results: &[Result<Routed, Rejection>],
    ) -> anyhow::Result<()> {
        let routed: Vec<(&Event, &Routed)> = parsed
            .iter()
            .zip(results)
            .filter_map(|(parsed, result)| Some((parsed.as_ref().ok()?, result.as_ref().ok()?)))
            .collect();
        if routed.is_empty() {
            return Ok(());
        }
        record::record(self.router.pool(), &routed).await
    }

    /// Produces every delivery and waits until Kafka has acknowledged all.
    async fn publish(&self, deliveries: &[&DeliveryMessage]) -> anyhow::Result<()> {
        let sends = deliveries.iter().map(|delivery| async move {
            let key = delivery.delivery_id.to_string();
            let payload = delivery.to_json();
            let record = FutureRecord::to(&self.deliveries_topic)
                .key(&key)
                .payload(&payload);
            self.producer
                .send(record, QUEUE_TIMEOUT)
                .await
                .map_err(|(err, _)| err)
        });
        try_join_all(sends)
            .await
            .context("Failed to produce delivery messages")?;
        Ok(())
    }

    /// Sets an unroutable event aside: the original key and payload, with
    /// the reason and the source position in headers.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        rejection: &Rejection,
    ) -> anyhow::Result<()> {
        tracing::warn!(
            reason = rejection.reason.as_str(),
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "event set aside on the dead-letter topic"
        );
        let headers = DeadLetterHeaders::new()
            .with("tanto.reason", rejection.reason.as_str())
            .with("tanto.message", &rejection.message)
            .with("tanto.source.topic", message.topic())
            .with("tanto.source.partition", message.partition())
            .with("tanto.source.offset", message.offset())
            .with(
                "tanto.rejected_at",
                chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339(),
            );
        let mut record = FutureRecord::to(&self.dead_letter_topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers.to_kafka());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, QUEUE_TIMEOUT)
            .await
            .map_err(|(err, _)| err)
            .context("Failed to produce to the event dead-letter topic")?;
        Ok(())
    }
}

fn log_routed(event: &Event, routed: &Routed) {
    tracing::debug!(
        event_id = %event.event_id,
        event_type = %event.event_type,
        deliveries = routed.deliveries.len(),
        empty_classes = routed.empty_classes.len(),
        disabled_mails = routed.disabled_mails.len(),
        unknown_customer = routed.unknown_customer,
        unknown_products = routed.unknown_products,
        "event routed"
    );
}

fn count(topic: &str, parsed: &Result<Event, Rejection>, outcome: &Outcome) {
    let metrics = metrics();
    let event_type = parsed
        .as_ref()
        .map_or("unknown", |event| event.event_type.as_str());
    match outcome {
        Outcome::SetAside(reason) => {
            let labels = [topic, event_type, "dead_lettered", reason.as_str()];
            metrics.events_consumed.with_label_values(&labels).inc();
        }
        Outcome::Routed(routed) => {
            metrics
                .events_consumed
                .with_label_values(&[topic, event_type, "routed", "none"])
                .inc();
            for delivery in &routed.deliveries {
                for class in &delivery.recipient.classes {
                    let labels = [delivery.mail.number.as_str(), class.as_str()];
                    metrics.deliveries_produced.with_label_values(&labels).inc();
                }
            }
            for (number, class) in &routed.empty_classes {
                metrics
                    .empty_classes
                    .with_label_values(&[number.as_str(), class.as_str()])
                    .inc();
            }
            let unknown = &metrics.unknown_references;
            unknown
                .with_label_values(&["customer"])
                .inc_by(u64::from(routed.unknown_customer));
            unknown
                .with_label_values(&["product"])
                .inc_by(routed.unknown_products as u64);
        }
    }
}
