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
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::consumer::{self, Batching, Handled, Handler};
use crate::delivery::DeliveryMessage;
use crate::event::{self, Event, Family, RejectReason, Rejection};
use crate::http;
use crate::kafka::{self, DeadLetterHeaders};
use crate::metrics::metrics;
use crate::routing::{RouteError, Routed, Router, record};
use crate::shutdown::Shutdown;

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
    let group = settings
        .kafka
        .consumer_group
        .clone()
        .unwrap_or_else(|| default_group(family));
    let catalog = Catalog::load(&settings.mail.catalog)?;
    metrics().init_notifier(source, &catalog, family);
    let pool = crate::db::pool(&settings.database)?;
    let notifier = Notifier {
        family,
        router: Router::new(pool, catalog),
        producer: kafka::producer(&settings.kafka.brokers)?,
        deliveries_topic: topics.deliveries.clone(),
        dead_letter_topic: topics.events_dlq.clone(),
    };
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
    http::spawn(addr, checks, shutdown.clone()).await?;
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
        &notifier,
        &shutdown,
        batching,
        deadline,
    )
    .await?;
    Ok(())
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
    /// Routes and publishes the event, or sets it aside; a failure of the
    /// database or the broker is retried until it passes or shutdown comes.
    async fn handle(&self, message: &OwnedMessage, shutdown: &Shutdown) -> anyhow::Result<Handled> {
        let parsed = event::parse(message.payload().unwrap_or_default(), self.family);
        let step = consumer::retry("route event", shutdown, || self.try_once(message, &parsed));
        let Some(outcome) = step.await else {
            return Ok(Handled::Interrupted);
        };
        count(message.topic(), &parsed, &outcome);
        Ok(Handled::Done)
    }
}

/// What the notifier did with an event, for the metrics.
enum Outcome {
    Routed(Routed),
    SetAside(RejectReason),
}

impl Notifier {
    async fn try_once(
        &self,
        message: &OwnedMessage,
        parsed: &Result<Event, Rejection>,
    ) -> anyhow::Result<Outcome> {
        let event = match parsed {
            Ok(event) => event,
            Err(rejection) => return self.dead_letter(message, rejection).await,
        };
        let routing = metrics().routing_duration.start_timer();
        let routed = self.router.route(event).await;
        routing.observe_duration();
        match routed {
            Ok(routed) => {
                log_routed(event, &routed);
                self.publish(&routed.deliveries).await?;
                record::record(self.router.pool(), event, &routed).await?;
                Ok(Outcome::Routed(routed))
            }
            Err(RouteError::Rejected(rejection)) => self.dead_letter(message, &rejection).await,
            Err(RouteError::Unavailable(err)) => Err(err),
        }
    }

    /// Produces every delivery and waits until Kafka has acknowledged all.
    async fn publish(&self, deliveries: &[DeliveryMessage]) -> anyhow::Result<()> {
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
    ) -> anyhow::Result<Outcome> {
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
        Ok(Outcome::SetAside(rejection.reason))
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
