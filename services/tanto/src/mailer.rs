//! The mailer: reads delivery messages, renders them, sends them over SMTP,
//! and keeps the ledger and send history.
//!
//! Delivery guarantee: every delivery ends sent once, or dead-lettered with
//! its reason. The ledger row of a delivery id is written before the send
//! and marked sent after the server accepts it; a delivery that arrives
//! again and finds its row sent is skipped, so redeliveries, duplicated
//! events and repeated routes send nothing twice. The offset of a delivery
//! is stored only once the delivery is recorded as sent or dead-lettered.
//!
//! The one window for a second copy: the mailer dies after the server
//! accepted a mail and before the ledger says sent. The delivery is read
//! again and sent again (a repeated notice costs less than a missed one).
//!
//! Every failure is final for now: transient SMTP failures are dead-lettered
//! like permanent ones, with their class, so an operator sees them. Retry
//! tiers are the subject of a later change (docs/operations.md).

use std::net::SocketAddr;
use std::time::SystemTime;

use anyhow::Context;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::catalog::Catalog;
use crate::config::Settings;
use crate::consumer::{self, Batching, Handled, Handler};
use crate::delivery::DeliveryMessage;
use crate::http;
use crate::kafka::{self, DeadLetterHeaders};
use crate::ledger::{Claim, Failure, Ledger};
use crate::render::{RenderedMail, Renderer};
use crate::shutdown::Shutdown;
use crate::smtp::{SendError, Sender};

/// The mailer's consumer group unless configured otherwise.
pub const DEFAULT_GROUP: &str = "tanto-mailer";

/// Runs the mailer until `shutdown`.
pub async fn run(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let topics = &settings.kafka.topics;
    let group = settings
        .kafka
        .consumer_group
        .as_deref()
        .unwrap_or(DEFAULT_GROUP);
    let catalog = Catalog::load(&settings.mail.catalog)?;
    let renderer = Renderer::load(&settings.mail.templates, catalog)?;
    let pool = crate::db::pool(&settings.database)?;
    let mailer = Mailer {
        renderer,
        ledger: Ledger::new(pool),
        sender: Sender::new(&settings.smtp, &settings.mail.from)?,
        producer: kafka::producer(&settings.kafka.brokers)?,
        dead_letter_topic: topics.deliveries_dlq.clone(),
    };
    let checks = vec![
        http::database_check(mailer.ledger.pool().clone()),
        http::broker_check(mailer.producer.clone()),
        http::smtp_check(settings.smtp.host.clone(), settings.smtp.port),
    ];
    let addr = settings
        .http_addr
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9104)));
    http::spawn(addr, checks, shutdown.clone()).await?;
    let connect = || {
        let source = [topics.deliveries.as_str()];
        let consumer =
            kafka::consumer(&settings.kafka.brokers, group, &source, Default::default())?;
        tracing::info!(topic = %topics.deliveries, group, "mailer ready");
        Ok(consumer)
    };
    let batching = Batching {
        stall_after: settings.watchdog_stall,
        ..Batching::default()
    };
    let deadline = settings.shutdown_deadline;
    consumer::consume(
        connect,
        &mailer.producer,
        &mailer,
        &shutdown,
        batching,
        deadline,
    )
    .await?;
    Ok(())
}

struct Mailer {
    renderer: Renderer,
    ledger: Ledger,
    sender: Sender,
    producer: FutureProducer,
    dead_letter_topic: String,
}

impl Handler for Mailer {
    async fn handle(&self, message: &OwnedMessage, shutdown: &Shutdown) -> anyhow::Result<Handled> {
        let done = match DeliveryMessage::from_json(message.payload().unwrap_or_default()) {
            Ok(delivery) => self.deliver(message, &delivery, shutdown).await,
            Err(err) => {
                let failure = Failure {
                    class: "malformed_delivery".into(),
                    detail: err.to_string(),
                };
                let dead_letter = || self.dead_letter(message, &failure, 0);
                consumer::retry("dead-letter delivery", shutdown, dead_letter).await
            }
        };
        Ok(done.map_or(Handled::Interrupted, |()| Handled::Done))
    }
}

impl Mailer {
    /// Sends one delivery and records the outcome. `None` means shutdown
    /// came while a step was waiting for the database or the broker.
    async fn deliver(
        &self,
        message: &OwnedMessage,
        delivery: &DeliveryMessage,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let id = delivery.delivery_id;
        let claim =
            consumer::retry("claim delivery", shutdown, || self.ledger.claim(delivery)).await?;
        let Claim::Send { attempt } = claim else {
            tracing::debug!(delivery_id = %id, "delivery already sent; skipped");
            return Some(());
        };
        let sender = self.sender.from().to_string();
        match self.render_and_send(delivery).await {
            Ok(mail) => {
                let mark = || self.ledger.mark_sent(id, &sender, &mail);
                consumer::retry("record sent delivery", shutdown, mark).await
            }
            Err((mail, failure)) => {
                tracing::warn!(delivery_id = %id, mail = %delivery.mail.number, class = %failure.class, "delivery failed; dead-lettered");
                let mark = || self.ledger.mark_dead(id, &sender, mail.as_ref(), &failure);
                consumer::retry("record dead delivery", shutdown, mark).await?;
                let dead_letter = || self.dead_letter(message, &failure, attempt);
                consumer::retry("dead-letter delivery", shutdown, dead_letter).await
            }
        }
    }

    async fn render_and_send(
        &self,
        delivery: &DeliveryMessage,
    ) -> Result<RenderedMail, (Option<RenderedMail>, Failure)> {
        let mail = self.renderer.render(delivery).map_err(|err| {
            (
                None,
                Failure {
                    class: "render_error".into(),
                    detail: err.to_string(),
                },
            )
        })?;
        match self.sender.send(delivery, &mail).await {
            Ok(()) => Ok(mail),
            Err(err) => Err((Some(mail), failure_of(&err))),
        }
    }

    /// Puts the delivery, byte for byte, on the delivery dead-letter topic,
    /// with why it failed in headers.
    async fn dead_letter(
        &self,
        message: &OwnedMessage,
        failure: &Failure,
        attempts: i32,
    ) -> anyhow::Result<()> {
        let now = chrono::DateTime::<chrono::Utc>::from(SystemTime::now()).to_rfc3339();
        let headers = DeadLetterHeaders::new()
            .with("tanto.error_class", &failure.class)
            .with("tanto.error", &failure.detail)
            .with("tanto.attempts", attempts)
            .with("tanto.first_failed_at", &now)
            .with("tanto.last_failed_at", &now)
            .with("tanto.source.topic", message.topic())
            .with("tanto.source.partition", message.partition())
            .with("tanto.source.offset", message.offset());
        let mut record = FutureRecord::to(&self.dead_letter_topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers.to_kafka());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, std::time::Duration::from_secs(30))
            .await
            .map_err(|(err, _)| err)
            .context("Failed to produce to the delivery dead-letter topic")?;
        Ok(())
    }
}

fn failure_of(err: &SendError) -> Failure {
    Failure {
        class: err.class().to_string(),
        detail: err.detail().to_string(),
    }
}
