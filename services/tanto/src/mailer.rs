//! The mailer: reads delivery messages, renders them, sends them over SMTP,
//! retries what failed for now, dead-letters what failed for good, and keeps
//! the ledger and send history.
//!
//! Delivery guarantee: every delivery ends in exactly one of
//!
//! - **sent once**: the server accepted it, and the ledger says `sent`. A
//!   record of a sent delivery that arrives again (a redelivery, a
//!   duplicated event, a replay) is acknowledged and skipped, for as long as
//!   the ledger keeps the row (`TANTO_HISTORY_RETENTION_DAYS`);
//! - **dead-lettered with its reason**: a permanent failure at once, a
//!   transient one after the last retry tier; the record on the dead-letter
//!   topic is the delivery as it was written, with the error class, the
//!   attempts, the first and last failure times and the last SMTP reply in
//!   headers, and the ledger says `dead`;
//! - **unknown, rarely and visibly**: the message data went out and no
//!   answer came back, because the process died or the connection dropped.
//!   Only such a delivery can reach the server twice. It is counted in the
//!   ledger (`unknown_outcomes`) and, by `TANTO_UNKNOWN_OUTCOME`, sent again
//!   (the default: a missed order notice costs more than a repeated one) or
//!   held on the dead-letter topic with the ledger saying `unknown`.
//!
//! A transient failure moves the delivery to the next retry tier: a topic
//! whose records carry a due time and wait until it without delaying fresh
//! deliveries (each tier has its own consumer). Offsets are stored only once
//! a delivery is sent, on a retry tier or on the dead-letter topic, and the
//! ledger is written before the retry or dead-letter record, so a crash at
//! any step repeats that step and loses nothing (see [`ledger::decide`]).
//!
//! Records with the same key (the delivery id) in the same partition are
//! handled in order; other records concurrently, with at most
//! `TANTO_SMTP_CONNECTIONS` sends in flight. What an operator sees and does
//! is in docs/mailer.md.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::Utc;
use futures::future::join_all;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::catalog::Catalog;
use crate::config::{Settings, UnknownOutcome};
use crate::consumer::{self, Batching, Handled, Handler, LagContext};
use crate::delivery::DeliveryMessage;
use crate::http;
use crate::kafka::{self, DeadLetterHeaders};
use crate::ledger::{self, Begin, Claim, HandOffTo, Ledger, Outcome, Seen, Status};
use crate::metrics::metrics;
use crate::render::{RenderedMail, Renderer};
use crate::retry::{ERROR_CLASSES, Earlier, Failure, RetryState, Schedule, Severity, Tier};
use crate::shutdown::Shutdown;
use crate::smtp::{self, Sender, Slot};

/// The mailer's consumer group unless configured otherwise; retry tier `n`
/// is read by the group `<group>-retry-<n>`.
pub const DEFAULT_GROUP: &str = "tanto-mailer";

/// How often the dead letters waiting are counted: often enough for an
/// alert, rarely enough that the count costs nothing.
const DEAD_LETTER_COUNT_INTERVAL: Duration = Duration::from_secs(10);

/// How long a produce may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often expired send history is deleted.
const TRIM_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Runs the mailer until `shutdown`.
pub async fn run(settings: &Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let mailer = Mailer::new(settings)?;
    let topics = &settings.kafka.topics;
    let tiers = mailer.schedule.tiers().len();
    metrics().init_mailer(
        &topics.deliveries,
        mailer.renderer.catalog(),
        ERROR_CLASSES,
        tiers,
    );
    serve_http(settings, &mailer, &shutdown).await?;
    let sources = sources(settings);
    let loops = sources
        .iter()
        .map(|(topic, group)| consume(settings, topic, group, &mailer, &shutdown));
    let retention = settings.mailer.history_retention;
    let upkeep = async {
        tokio::join!(
            trim_history(&mailer.ledger, retention, &shutdown),
            count_dead_letters(&mailer.ledger, &shutdown)
        )
    };
    let (results, _) = tokio::join!(join_all(loops), upkeep);
    mailer.sender.close().await;
    results.into_iter().collect()
}

/// `/metrics`, `/healthz`, and `/readyz` checking the ledger's database,
/// the broker and the SMTP relay.
async fn serve_http(
    settings: &Settings,
    mailer: &Mailer,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let checks = vec![
        http::database_check(mailer.ledger.pool().clone()),
        http::broker_check(mailer.producer.clone()),
        http::smtp_check(settings.smtp.host.clone(), settings.smtp.port),
    ];
    let addr = settings
        .http_addr
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9104)));
    http::spawn(addr, checks, shutdown.clone()).await
}

/// One source per consumer: the delivery topic, then each retry tier, each
/// in its own group so that a tier's rebalance never stalls the others.
fn sources(settings: &Settings) -> Vec<(String, String)> {
    let topics = &settings.kafka.topics;
    let group = settings
        .kafka
        .consumer_group
        .as_deref()
        .unwrap_or(DEFAULT_GROUP);
    let tiers = topics.deliveries_retry.iter().enumerate();
    let tier_sources =
        tiers.map(|(index, topic)| (topic.clone(), format!("{group}-retry-{}", index + 1)));
    std::iter::once((topics.deliveries.clone(), group.to_string()))
        .chain(tier_sources)
        .collect()
}

/// Runs one consume loop; if it fails, the others are stopped too.
async fn consume(
    settings: &Settings,
    topic: &str,
    group: &str,
    mailer: &Mailer,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let connect = || {
        let consumer = kafka::consumer(
            &settings.kafka.brokers,
            group,
            &[topic],
            LagContext::default(),
        )?;
        tracing::info!(topic, group, "mailer ready");
        Ok(consumer)
    };
    let batching = Batching {
        stall_after: settings.watchdog_stall,
        ..Batching::default()
    };
    let deadline = settings.shutdown_deadline;
    let result = consumer::consume(
        connect,
        &mailer.producer,
        mailer,
        shutdown,
        batching,
        deadline,
    );
    let result = result.await.map(drop);
    if result.is_err() {
        shutdown.trigger();
    }
    result
}

/// Keeps `tanto_dead_letters_waiting{kind="deliveries"}` at the number of
/// deliveries the ledger holds as dead or unknown, every ten seconds.
async fn count_dead_letters(ledger: &Ledger, shutdown: &Shutdown) {
    loop {
        match ledger.count_set_aside().await {
            Ok(count) => metrics()
                .dead_letters_waiting
                .with_label_values(&["deliveries"])
                .set(count),
            Err(err) => tracing::debug!(error = format!("{err:#}"), "cannot count dead deliveries"),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(DEAD_LETTER_COUNT_INTERVAL) => {}
        }
    }
}

/// Deletes expired send history now and every [`TRIM_INTERVAL`].
async fn trim_history(ledger: &Ledger, retention: Duration, shutdown: &Shutdown) {
    loop {
        match ledger.purge(retention).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired send history deleted"),
            Err(err) => tracing::warn!(
                error = format!("{err:#}"),
                "cannot delete expired send history; will try again"
            ),
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(TRIM_INTERVAL) => {}
        }
    }
}

struct Mailer {
    renderer: Renderer,
    ledger: Ledger,
    sender: Sender,
    producer: FutureProducer,
    schedule: Schedule,
    dead_letter_topic: String,
    unknown_outcome: UnknownOutcome,
}

impl Handler for Mailer {
    async fn handle(&self, message: &OwnedMessage, shutdown: &Shutdown) -> anyhow::Result<Handled> {
        let done = match DeliveryMessage::from_json(message.payload().unwrap_or_default()) {
            Ok(delivery) => self.deliver(message, &delivery, shutdown).await,
            Err(err) => self.set_aside_malformed(message, &err, shutdown).await,
        };
        Ok(done.map_or(Handled::Interrupted, |()| Handled::Done))
    }

    /// Records on a retry tier wait for their due time; nothing else waits.
    fn not_before(&self, message: &OwnedMessage) -> Option<SystemTime> {
        let tier = self
            .schedule
            .tiers()
            .iter()
            .any(|tier| tier.topic == message.topic());
        let due = Earlier::from_headers(message.headers()).due_at;
        due.filter(|_| tier).map(SystemTime::from)
    }
}

impl Mailer {
    fn new(settings: &Settings) -> anyhow::Result<Self> {
        let catalog = Catalog::load(&settings.mail.catalog)?;
        let topics = &settings.kafka.topics;
        Ok(Self {
            renderer: Renderer::load(&settings.mail.templates, catalog)?,
            ledger: Ledger::new(crate::db::pool(&settings.database)?),
            sender: Sender::new(&settings.smtp, &settings.mail.from)?,
            producer: kafka::producer(&settings.kafka.brokers)?,
            schedule: Schedule::new(&topics.deliveries_retry, &settings.mailer.retry_delays),
            dead_letter_topic: topics.deliveries_dlq.clone(),
            unknown_outcome: settings.mailer.unknown_outcome,
        })
    }

    /// Does what the ledger says this record means. `None` means shutdown
    /// came while a step was waiting for the database or the broker.
    async fn deliver(
        &self,
        message: &OwnedMessage,
        delivery: &DeliveryMessage,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let id = delivery.delivery_id;
        let earlier = Earlier::from_headers(message.headers());
        let entry = consumer::retry("read the ledger", shutdown, || self.ledger.entry(id)).await?;
        let replays = ledger::replay_count(delivery);
        let claim = ledger::decide(
            entry.as_ref(),
            earlier.attempts,
            replays,
            self.unknown_outcome,
        );
        match claim {
            Claim::Skip(skip) => {
                if skip == ledger::Skip::AlreadySent {
                    metrics().deliveries_skipped.inc();
                }
                tracing::debug!(delivery_id = %id, reason = skip.as_str(), "record skipped");
                Some(())
            }
            Claim::HandOff { to, state } => self.hand_off(message, to, &state, shutdown).await,
            Claim::HoldUnknown { seen } => {
                let failure = interrupted(seen);
                let attempt = Attempt {
                    message,
                    delivery,
                    earlier: &earlier,
                    number: seen.attempts,
                };
                self.fail(&attempt, &failure, None, None, shutdown).await
            }
            Claim::Send(begin) => {
                self.send(message, delivery, &earlier, begin, shutdown)
                    .await
            }
        }
    }

    /// Renders and sends the delivery as a new attempt, and records how it
    /// ended. The connection slot is held until the outcome is recorded, so
    /// no more deliveries than there are connections are ever `sending`.
    async fn send(
        &self,
        message: &OwnedMessage,
        delivery: &DeliveryMessage,
        earlier: &Earlier,
        begin: Begin,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let id = delivery.delivery_id;
        let attempt = Attempt {
            message,
            delivery,
            earlier,
            number: begin.attempt(),
        };
        let (mail, email) = match self.prepare(delivery) {
            Prepared::Ready(mail, email) => (mail, email),
            Prepared::Failed(mail, failure) => {
                return self
                    .fail(&attempt, &failure, mail.as_ref(), None, shutdown)
                    .await;
            }
        };
        let slot = self.sender.reserve().await;
        let begun = || self.ledger.begin_attempt(delivery, begin);
        if !consumer::retry("begin an attempt", shutdown, begun).await? {
            tracing::debug!(delivery_id = %id, "another handler took the delivery; skipped");
            return Some(());
        }
        if begin.after_unknown {
            let mail = delivery.mail.number.as_str();
            metrics().mails_unknown.with_label_values(&[mail]).inc();
            tracing::warn!(
                delivery_id = %id,
                attempt = attempt.number,
                "the previous send was cut short; its outcome is unknown; sending again"
            );
        }
        let sender = self.sender.from().to_string();
        let sending = metrics().smtp_send_duration.start_timer();
        let sent = slot.send(&email).await;
        sending.observe_duration();
        match sent {
            Ok(()) => {
                count_sent(delivery);
                let record = || self.ledger.record_sent(id, &sender, &mail);
                consumer::retry("record a sent delivery", shutdown, record).await
            }
            Err(failure) => {
                let slot = Some(slot);
                self.fail(&attempt, &failure, Some(&mail), slot, shutdown)
                    .await
            }
        }
    }

    /// Renders the mail and builds the message to send. A failure here is
    /// permanent; the rendered mail, if any, is kept for the history.
    fn prepare(&self, delivery: &DeliveryMessage) -> Prepared {
        let rendering = metrics().render_duration.start_timer();
        let rendered = self.renderer.render(delivery);
        rendering.observe_duration();
        let mail = match rendered {
            Ok(mail) => mail,
            Err(err) => {
                let failure = Failure::permanent("render_error", err.to_string());
                return Prepared::Failed(None, failure);
            }
        };
        match smtp::build_message(self.sender.from(), delivery, &mail) {
            Ok(email) => Prepared::Ready(mail, email),
            Err(failure) => Prepared::Failed(Some(mail), failure),
        }
    }

    /// Records a failed attempt and hands the delivery on, to the next
    /// retry tier or to the dead-letter topic. The send slot, if the attempt
    /// held one, is given back once the ledger no longer says `sending`.
    async fn fail(
        &self,
        attempt: &Attempt<'_>,
        failure: &Failure,
        mail: Option<&RenderedMail>,
        slot: Option<Slot<'_>>,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let (status, tier) = self.next_step(attempt, failure);
        let state = retry_state(attempt, failure, tier);
        let sender = self.sender.from().to_string();
        let outcome = Outcome {
            status,
            attempt: attempt.number,
            state: &state,
            failure,
            sender: &sender,
            mail,
        };
        let record = || self.ledger.record_failure(attempt.delivery, outcome);
        let recorded = consumer::retry("record a failed attempt", shutdown, record).await?;
        drop(slot);
        if !recorded {
            // Another mailer sent it meanwhile (their partitions overlapped
            // during a rebalance): there is nothing to hand on.
            let id = attempt.delivery.delivery_id;
            tracing::debug!(delivery_id = %id, "delivery sent meanwhile");
            return Some(());
        }
        log_failure(attempt, failure, status, tier.map(|tier| tier.number));
        count_failure(attempt, failure, status, tier.map(|tier| tier.number));
        let to = match status {
            Status::Retrying => HandOffTo::Retry,
            _ => HandOffTo::DeadLetter,
        };
        self.hand_off(attempt.message, to, &state, shutdown).await
    }

    /// Where a failed attempt leaves the delivery: retrying on the next
    /// tier while one is left and trying again can help, otherwise dead,
    /// or held as unknown.
    fn next_step(&self, attempt: &Attempt<'_>, failure: &Failure) -> (Status, Option<&Tier>) {
        let retry = match failure.severity {
            Severity::Transient => true,
            Severity::Unknown => self.unknown_outcome == UnknownOutcome::Resend,
            Severity::Permanent => false,
        };
        let tier = self.schedule.after(attempt.message.topic());
        match (tier, failure.severity) {
            (Some(tier), _) if retry => (Status::Retrying, Some(tier)),
            (_, Severity::Unknown) if !retry => (Status::Unknown, None),
            _ => (Status::Dead, None),
        }
    }

    /// Writes the record that carries a failed delivery on: to the next
    /// retry tier, or to the dead-letter topic.
    async fn hand_off(
        &self,
        message: &OwnedMessage,
        to: HandOffTo,
        state: &RetryState,
        shutdown: &Shutdown,
    ) -> Option<()> {
        let tier = self.schedule.after(message.topic());
        // A retry whose tier no longer exists (the schedule was shortened
        // by a restart in between) is dead-lettered instead.
        let topic = match (to, tier) {
            (HandOffTo::Retry, Some(tier)) => tier.topic.as_str(),
            _ => self.dead_letter_topic.as_str(),
        };
        let headers = state.headers().with("tanto.source.topic", message.topic());
        let headers = headers
            .with("tanto.source.partition", message.partition())
            .with("tanto.source.offset", message.offset());
        let produce = || self.produce(topic, message, &headers);
        consumer::retry("hand a delivery on", shutdown, produce).await
    }

    /// A record that is not a delivery message cannot be sent or retried:
    /// it goes to the dead-letter topic as it is.
    async fn set_aside_malformed(
        &self,
        message: &OwnedMessage,
        err: &serde_json::Error,
        shutdown: &Shutdown,
    ) -> Option<()> {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "a record that is not a delivery message was dead-lettered"
        );
        let now = Utc::now();
        let state = RetryState {
            attempts: 0,
            first_failed_at: now,
            last_failed_at: now,
            error_class: "malformed_delivery".into(),
            error: err.to_string(),
            smtp_reply: None,
            due_at: None,
        };
        self.hand_off(message, HandOffTo::DeadLetter, &state, shutdown)
            .await
    }

    /// Produces `message`'s key and payload, byte for byte, with `headers`.
    async fn produce(
        &self,
        topic: &str,
        message: &OwnedMessage,
        headers: &DeadLetterHeaders,
    ) -> anyhow::Result<()> {
        let mut record = FutureRecord::to(topic)
            .payload(message.payload().unwrap_or_default())
            .headers(headers.to_kafka());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        self.producer
            .send(record, QUEUE_TIMEOUT)
            .await
            .map_err(|(err, _)| err)
            .with_context(|| format!("Failed to produce to {topic}"))?;
        Ok(())
    }
}

/// A mail ready to send, or why it cannot be.
enum Prepared {
    Ready(RenderedMail, lettre::Message),
    Failed(Option<RenderedMail>, Failure),
}

/// One attempt at a delivery, read from `message`.
struct Attempt<'a> {
    message: &'a OwnedMessage,
    delivery: &'a DeliveryMessage,
    earlier: &'a Earlier,
    number: i32,
}

/// The retry state after `attempt` failed; due after the delay of `tier`.
fn retry_state(attempt: &Attempt<'_>, failure: &Failure, tier: Option<&Tier>) -> RetryState {
    let now = Utc::now();
    RetryState {
        attempts: attempt.number,
        first_failed_at: attempt.earlier.first_failed_at.unwrap_or(now),
        last_failed_at: now,
        error_class: failure.class.to_string(),
        error: failure.detail.clone(),
        smtp_reply: failure.smtp_reply.clone(),
        due_at: tier.map(|tier| now + tier.delay),
    }
}

/// The failure recorded for an attempt that a dead process left `sending`.
fn interrupted(seen: Seen) -> Failure {
    Failure {
        severity: Severity::Unknown,
        class: "unknown_outcome",
        detail: format!(
            "attempt {} was cut short after it began sending and before the server's \
             answer was recorded (the mailer stopped); the server may have the mail",
            seen.attempts
        ),
        smtp_reply: None,
    }
}

/// One line per failed attempt: DEBUG while retries remain, WARN once the
/// delivery is set aside for an operator or its outcome is unknown. The
/// error detail is not logged: servers quote the recipient's address in it.
fn log_failure(attempt: &Attempt<'_>, failure: &Failure, status: Status, tier: Option<usize>) {
    let delivery = attempt.delivery;
    let (id, mail, number) = (delivery.delivery_id, &delivery.mail.number, attempt.number);
    let class = failure.class;
    match status {
        Status::Retrying if failure.severity == Severity::Unknown => tracing::warn!(
            delivery_id = %id, mail = %mail, attempt = number, class, tier,
            "send outcome unknown; the delivery will be sent again"
        ),
        Status::Retrying => tracing::debug!(
            delivery_id = %id, mail = %mail, attempt = number, class, tier,
            "attempt failed; retry scheduled"
        ),
        Status::Unknown => tracing::warn!(
            delivery_id = %id, mail = %mail, attempt = number, class,
            "send outcome unknown; the delivery is held for an operator"
        ),
        _ => tracing::warn!(
            delivery_id = %id, mail = %mail, attempts = number, class,
            "delivery dead-lettered"
        ),
    }
}

/// Counts a mail the server accepted, and how long after its event.
fn count_sent(delivery: &DeliveryMessage) {
    let metrics = metrics();
    metrics
        .mails_sent
        .with_label_values(&[delivery.mail.number.as_str()])
        .inc();
    if let Ok(occurred) = chrono::DateTime::parse_from_rfc3339(&delivery.event.occurred_at) {
        let waited = Utc::now().signed_duration_since(occurred);
        metrics
            .event_to_smtp_duration
            .observe(waited.num_milliseconds().max(0) as f64 / 1000.0);
    }
}

/// Counts a failed attempt by where it left the delivery.
fn count_failure(attempt: &Attempt<'_>, failure: &Failure, status: Status, tier: Option<usize>) {
    let metrics = metrics();
    let mail = attempt.delivery.mail.number.as_str();
    if failure.severity == Severity::Unknown {
        metrics.mails_unknown.with_label_values(&[mail]).inc();
    }
    match (status, tier) {
        (Status::Retrying, Some(tier)) => {
            metrics
                .mails_retried
                .with_label_values(&[mail, &tier.to_string()])
                .inc();
        }
        (Status::Dead, _) => {
            metrics
                .mails_dead_lettered
                .with_label_values(&[mail, failure.class])
                .inc();
        }
        _ => {}
    }
}
