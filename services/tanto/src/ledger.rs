//! The delivery ledger and send history (メール送信履歴): one row per
//! delivery id, holding where the delivery stands and everything the history
//! shows about it, and one row per attempt (`delivery_attempts`), written by
//! the same statement that moves the delivery's row.
//!
//! The ledger is what keeps a delivery from being sent twice. Every record
//! of a delivery (on the delivery topic, a retry tier, or replayed from the
//! dead-letter topic) says how many attempts were made before it was
//! written; [`decide`] compares that with the row and says what handling the
//! record means now. An attempt is begun only if the row is still as the
//! decision saw it (a compare-and-set), so two handlers of the same delivery
//! cannot both send it.
//!
//! A row moves:
//!
//! ```text
//!            ┌──────────────── retrying ◄──┐ transient failure
//!            ▼                             │
//! (none) ─► sending ──► sent               │
//!            │  └──────────────────────────┘
//!            ├──► dead      permanent failure, or the last tier failed
//!            └──► unknown   the outcome cannot be known and the mailer holds
//! ```
//!
//! A row found `sending` by a new record of the same attempt means the
//! process that began the attempt died before it recorded the outcome: the
//! server may or may not have the mail.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::config::UnknownOutcome;
use crate::delivery::DeliveryMessage;
use crate::render::RenderedMail;
use crate::retry::{Failure, RetryState, Severity};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Sending,
    Sent,
    Retrying,
    Dead,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Retrying => "retrying",
            Status::Dead => "dead",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "sending" => Status::Sending,
            "sent" => Status::Sent,
            "retrying" => Status::Retrying,
            "dead" => Status::Dead,
            "unknown" => Status::Unknown,
            other => anyhow::bail!("the ledger holds an unknown status '{other}'"),
        })
    }
}

/// A ledger row as a new record of the delivery finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub status: Status,
    pub attempts: i32,
    pub replay_count: i32,
    /// What the last failure recorded, to write its retry or dead-letter
    /// record again if that step did not happen.
    pub failure: Option<RetryState>,
}

/// The state a row must still be in for an attempt to begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub status: Status,
    pub attempts: i32,
}

/// A new attempt, and what the row must still be for it to begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The row as the decision saw it; `None` if there was none.
    pub seen: Option<Seen>,
    /// The previous attempt's outcome is unknown and the mailer is set to
    /// send again; the attempt counts one more unknown outcome.
    pub after_unknown: bool,
}

impl Begin {
    /// The number of the attempt: one more than the row's.
    pub fn attempt(&self) -> i32 {
        self.seen.map_or(1, |seen| seen.attempts + 1)
    }
}

/// What a delivery record means, given the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Begin a new attempt.
    Send(Begin),
    /// The previous attempt's outcome is unknown and the mailer is set to
    /// hold: record that and set the delivery aside for an operator.
    HoldUnknown { seen: Seen },
    /// This record's attempt failed and the failure is recorded, but the
    /// process may have died before writing the retry or dead-letter
    /// record: write it (again).
    HandOff { to: HandOffTo, state: RetryState },
    /// Nothing to do; the record is acknowledged.
    Skip(Skip),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOffTo {
    Retry,
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The server accepted this delivery already.
    AlreadySent,
    /// The delivery was dead-lettered or held, and this is not a replay.
    Finished,
    /// A later record of the delivery has taken over (a repeat of an older
    /// record, such as the original after a retry was scheduled).
    Superseded,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::AlreadySent => "already_sent",
            Skip::Finished => "finished",
            Skip::Superseded => "superseded",
        }
    }
}

/// What a record with `attempts` earlier attempts and `replay_count` means
/// for a delivery whose row is `entry`.
pub fn decide(
    entry: Option<&Entry>,
    attempts: i32,
    replay_count: i32,
    unknown: UnknownOutcome,
) -> Claim {
    let send = |seen, after_unknown| {
        Claim::Send(Begin {
            seen,
            after_unknown,
        })
    };
    let Some(entry) = entry else {
        return send(None, false);
    };
    let seen = Seen {
        status: entry.status,
        attempts: entry.attempts,
    };
    // The record whose attempt the row describes, as opposed to the record
    // that continues after it.
    let own_attempt = entry.attempts == attempts + 1;
    let hand_off = |to| match &entry.failure {
        Some(state) => Claim::HandOff {
            to,
            state: state.clone(),
        },
        None => Claim::Skip(Skip::Superseded),
    };
    match entry.status {
        Status::Sent => Claim::Skip(Skip::AlreadySent),
        Status::Dead | Status::Unknown if replay_count > entry.replay_count => {
            send(Some(seen), false)
        }
        Status::Dead | Status::Unknown if own_attempt => hand_off(HandOffTo::DeadLetter),
        Status::Dead | Status::Unknown => Claim::Skip(Skip::Finished),
        Status::Retrying if entry.attempts == attempts => send(Some(seen), false),
        Status::Retrying if own_attempt => hand_off(HandOffTo::Retry),
        Status::Sending if own_attempt => match unknown {
            UnknownOutcome::Resend => send(Some(seen), true),
            UnknownOutcome::Hold => Claim::HoldUnknown { seen },
        },
        Status::Retrying | Status::Sending => Claim::Skip(Skip::Superseded),
    }
}

/// How an attempt ended badly, as the ledger records it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    pub status: Status,
    pub attempt: i32,
    pub state: &'a RetryState,
    pub failure: &'a Failure,
    pub sender: &'a str,
    pub mail: Option<&'a RenderedMail>,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: Pool,
}

impl Ledger {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The row of `delivery_id`, if there is one.
    pub async fn entry(&self, delivery_id: Uuid) -> anyhow::Result<Option<Entry>> {
        let client = self.client().await?;
        let _timer = query_timer("ledger_entry");
        let row = client
            .query_opt(
                "SELECT status, attempts, replay_count, first_failed_at, last_failed_at,
                        last_error_class, last_error, last_smtp_reply, next_attempt_at
                 FROM deliveries WHERE delivery_id = $1",
                &[&delivery_id],
            )
            .await
            .context("Failed to read the ledger")?;
        row.map(|row| entry_of(&row)).transpose()
    }

    /// Marks the delivery `sending` as attempt [`Begin::attempt`], if its
    /// row is still as the decision saw it. Returns false if another handler
    /// changed the row first.
    pub async fn begin_attempt(
        &self,
        delivery: &DeliveryMessage,
        begin: Begin,
    ) -> anyhow::Result<bool> {
        let client = self.client().await?;
        let _timer = query_timer("ledger_begin_attempt");
        let statement = client
            .prepare_cached(
                "WITH begun AS (
                 INSERT INTO deliveries (delivery_id, tenant_id, event_id, event_type,
                     transaction_number, management_number, mail_name, recipient_address,
                     recipient_name, recipient_classes, replay_count,
                     status, attempts, last_attempt_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'sending', 1, now())
                 ON CONFLICT (delivery_id) DO UPDATE
                 SET status = 'sending', attempts = deliveries.attempts + 1,
                     replay_count = greatest(deliveries.replay_count, excluded.replay_count),
                     unknown_outcomes = deliveries.unknown_outcomes + $12,
                     last_attempt_at = now(), next_attempt_at = NULL, updated_at = now()
                 WHERE deliveries.status = $13 AND deliveries.attempts = $14
                 RETURNING delivery_id, attempts, replay_count
                 )
                 INSERT INTO delivery_attempts (delivery_id, attempt, replay_count, outcome)
                 SELECT delivery_id, attempts, replay_count, 'sending' FROM begun
                 ON CONFLICT (delivery_id, attempt) DO UPDATE
                 SET started_at = now(), finished_at = NULL, outcome = 'sending',
                     error_class = NULL, error = NULL, smtp_reply = NULL",
            )
            .await?;
        let identity = Identity::of(delivery);
        let unknown = i32::from(begin.after_unknown);
        let status = begin.seen.map(|seen| seen.status.as_str());
        let attempts = begin.seen.map(|seen| seen.attempts);
        let mut params = identity.params();
        params.extend::<[Param<'_>; 3]>([&unknown, &status, &attempts]);
        let begun = client
            .execute(&statement, &params)
            .await
            .context("Failed to record the start of a delivery attempt")?;
        Ok(begun == 1)
    }

    /// Records a delivery the server accepted, with what was sent.
    pub async fn record_sent(
        &self,
        delivery_id: Uuid,
        sender: &str,
        mail: &RenderedMail,
    ) -> anyhow::Result<()> {
        let client = self.client().await?;
        let _timer = query_timer("ledger_record_sent");
        client
            .execute(
                "WITH sent AS (
                 UPDATE deliveries
                 SET status = 'sent', sender = $2, subject = $3, body_text = $4, body_html = $5,
                     sent_at = now(), next_attempt_at = NULL, updated_at = now()
                 WHERE delivery_id = $1
                 RETURNING attempts
                 )
                 UPDATE delivery_attempts AS a
                 SET outcome = 'sent', finished_at = now()
                 FROM sent WHERE a.delivery_id = $1 AND a.attempt = sent.attempts",
                &[&delivery_id, &sender, &mail.subject, &mail.text, &mail.html],
            )
            .await
            .context("Failed to record the delivery as sent")?;
        Ok(())
    }

    /// Records a failed attempt: `retrying`, `dead` or `unknown`, with the
    /// retry state its next record carries. The row is created if the
    /// attempt failed before it began (a template that does not render).
    /// A row already `sent` is left alone: returns false for it, since such
    /// a delivery needs no retry or dead-letter record.
    pub async fn record_failure(
        &self,
        delivery: &DeliveryMessage,
        outcome: Outcome<'_>,
    ) -> anyhow::Result<bool> {
        let client = self.client().await?;
        let _timer = query_timer("ledger_record_failure");
        let statement = client
            .prepare_cached(
                "WITH failed AS (
                 INSERT INTO deliveries (delivery_id, tenant_id, event_id, event_type,
                     transaction_number, management_number, mail_name, recipient_address,
                     recipient_name, recipient_classes, replay_count,
                     status, attempts, last_attempt_at, first_failed_at, last_failed_at,
                     last_error_class, last_error, last_smtp_reply, next_attempt_at,
                     unknown_outcomes, sender, subject, body_text, body_html)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                     $12, $13, now(), $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24)
                 ON CONFLICT (delivery_id) DO UPDATE
                 SET status = excluded.status, attempts = excluded.attempts,
                     replay_count = greatest(deliveries.replay_count, excluded.replay_count),
                     first_failed_at = excluded.first_failed_at,
                     last_failed_at = excluded.last_failed_at,
                     last_error_class = excluded.last_error_class,
                     last_error = excluded.last_error,
                     last_smtp_reply = excluded.last_smtp_reply,
                     next_attempt_at = excluded.next_attempt_at,
                     unknown_outcomes = deliveries.unknown_outcomes + excluded.unknown_outcomes,
                     sender = excluded.sender,
                     subject = coalesce(excluded.subject, deliveries.subject),
                     body_text = coalesce(excluded.body_text, deliveries.body_text),
                     body_html = coalesce(excluded.body_html, deliveries.body_html),
                     updated_at = now()
                 WHERE deliveries.status <> 'sent'
                 RETURNING delivery_id, attempts, replay_count
                 )
                 INSERT INTO delivery_attempts AS a (delivery_id, attempt, replay_count, outcome,
                     finished_at, error_class, error, smtp_reply)
                 SELECT delivery_id, attempts, replay_count, $12, now(), $16, $17, $18
                 FROM failed
                 ON CONFLICT (delivery_id, attempt) DO UPDATE
                 SET outcome = excluded.outcome, finished_at = now(),
                     error_class = excluded.error_class, error = excluded.error,
                     smtp_reply = excluded.smtp_reply",
            )
            .await?;
        let identity = Identity::of(delivery);
        let state = outcome.state;
        let status = outcome.status.as_str();
        let unknown = i32::from(outcome.failure.severity == Severity::Unknown);
        let mail = outcome.mail;
        let (subject, text, html) = (
            mail.map(|m| &m.subject),
            mail.map(|m| &m.text),
            mail.map(|m| &m.html),
        );
        let mut params = identity.params();
        params.extend::<[Param<'_>; 13]>([
            &status,
            &outcome.attempt,
            &state.first_failed_at,
            &state.last_failed_at,
            &state.error_class,
            &state.error,
            &state.smtp_reply,
            &state.due_at,
            &unknown,
            &outcome.sender,
            &subject,
            &text,
            &html,
        ]);
        let written = client
            .execute(&statement, &params)
            .await
            .with_context(|| format!("Failed to record the delivery as {status}"))?;
        Ok(written == 1)
    }

    /// Deletes rows that reached a final state (sent, dead, unknown) and did
    /// not change for `retention`, a thousand at a time so that no delete
    /// holds locks for long. Returns how many were deleted.
    pub async fn purge(&self, retention: Duration) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let seconds = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        let cutoff = Utc::now() - chrono::Duration::seconds(seconds);
        let mut deleted = 0;
        loop {
            let batch = client
                .execute(
                    "DELETE FROM deliveries WHERE delivery_id IN (
                         SELECT delivery_id FROM deliveries
                         WHERE updated_at < $1 AND status IN ('sent', 'dead', 'unknown')
                         LIMIT 1000)",
                    &[&cutoff],
                )
                .await
                .context("Failed to delete expired send history")?;
            deleted += batch;
            if batch == 0 {
                return Ok(deleted);
            }
        }
    }

    /// How many deliveries are set aside for an operator: dead, or held
    /// with an unknown outcome.
    pub async fn count_set_aside(&self) -> anyhow::Result<i64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM deliveries WHERE status IN ('dead', 'unknown')",
                &[],
            )
            .await
            .context("Failed to count dead deliveries")?;
        Ok(row.get(0))
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.context("Failed to reach the ledger")
    }
}

type Param<'a> = &'a (dyn ToSql + Sync);

/// Times a ledger statement into `tanto_db_query_duration_seconds`, from
/// when it has a connection until the timer is dropped.
fn query_timer(query: &str) -> prometheus::HistogramTimer {
    let histogram = crate::metrics::metrics()
        .db_query_duration
        .with_label_values(&[query]);
    histogram.start_timer()
}

/// The columns that say which mail to whom, the same in every row write.
struct Identity<'a> {
    delivery: &'a DeliveryMessage,
    event_type: &'static str,
    classes: Vec<&'static str>,
    replay_count: i32,
}

impl<'a> Identity<'a> {
    fn of(delivery: &'a DeliveryMessage) -> Self {
        Self {
            delivery,
            event_type: delivery.event.event_type.as_str(),
            classes: delivery
                .recipient
                .classes
                .iter()
                .map(|class| class.as_str())
                .collect(),
            replay_count: replay_count(delivery),
        }
    }

    /// Parameters `$1` to `$11` of an insert.
    fn params(&self) -> Vec<Param<'_>> {
        let delivery = self.delivery;
        vec![
            &delivery.delivery_id,
            &delivery.tenant_id,
            &delivery.event.event_id,
            &self.event_type,
            &delivery.transaction.number,
            &delivery.mail.number,
            &delivery.mail.name,
            &delivery.recipient.address,
            &delivery.recipient.name,
            &self.classes,
            &self.replay_count,
        ]
    }
}

/// The replay count as the ledger stores it; no delivery is replayed two
/// billion times.
pub fn replay_count(delivery: &DeliveryMessage) -> i32 {
    i32::try_from(delivery.replay_count).unwrap_or(i32::MAX)
}

fn entry_of(row: &Row) -> anyhow::Result<Entry> {
    let status: Status = row.get::<_, String>(0).parse()?;
    let attempts = row.get(1);
    let class: Option<String> = row.get(5);
    let failure = class.map(|error_class| {
        let last_failed_at: Option<DateTime<Utc>> = row.get(4);
        let last_failed_at = last_failed_at.unwrap_or_else(Utc::now);
        RetryState {
            attempts,
            first_failed_at: row.get::<_, Option<_>>(3).unwrap_or(last_failed_at),
            last_failed_at,
            error_class,
            error: row.get::<_, Option<String>>(6).unwrap_or_default(),
            smtp_reply: row.get(7),
            due_at: row.get(8),
        }
    });
    Ok(Entry {
        status,
        attempts,
        replay_count: row.get(2),
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure_state(attempts: i32) -> RetryState {
        let now = Utc::now();
        RetryState {
            attempts,
            first_failed_at: now,
            last_failed_at: now,
            error_class: "smtp_4xx".into(),
            error: "transient error (451)".into(),
            smtp_reply: Some("451 try later".into()),
            due_at: Some(now),
        }
    }

    fn entry(status: Status, attempts: i32) -> Entry {
        Entry {
            status,
            attempts,
            replay_count: 0,
            failure: (status != Status::Sending && status != Status::Sent)
                .then(|| failure_state(attempts)),
        }
    }

    fn send(seen: Option<Seen>, after_unknown: bool) -> Claim {
        Claim::Send(Begin {
            seen,
            after_unknown,
        })
    }

    fn seen(status: Status, attempts: i32) -> Option<Seen> {
        Some(Seen { status, attempts })
    }

    const RESEND: UnknownOutcome = UnknownOutcome::Resend;

    #[test]
    fn a_new_delivery_is_sent() {
        assert_eq!(decide(None, 0, 0, RESEND), send(None, false));
    }

    #[test]
    fn a_sent_delivery_is_never_sent_again_not_even_by_a_replay() {
        let sent = entry(Status::Sent, 1);
        for (attempts, replays) in [(0, 0), (1, 0), (5, 0), (1, 1)] {
            assert_eq!(
                decide(Some(&sent), attempts, replays, RESEND),
                Claim::Skip(Skip::AlreadySent)
            );
        }
    }

    #[test]
    fn the_retry_record_continues_and_older_records_are_superseded() {
        let retrying = entry(Status::Retrying, 2);
        assert_eq!(
            decide(Some(&retrying), 2, 0, RESEND),
            send(seen(Status::Retrying, 2), false)
        );
        // The original record and the first tier's record, read again.
        assert_eq!(
            decide(Some(&retrying), 0, 0, RESEND),
            Claim::Skip(Skip::Superseded)
        );
        assert_eq!(
            decide(Some(&retrying), 3, 0, RESEND),
            Claim::Skip(Skip::Superseded)
        );
    }

    #[test]
    fn the_record_whose_attempt_failed_writes_its_retry_record_again() {
        let retrying = entry(Status::Retrying, 2);
        assert_eq!(
            decide(Some(&retrying), 1, 0, RESEND),
            Claim::HandOff {
                to: HandOffTo::Retry,
                state: retrying.failure.clone().expect("failure"),
            }
        );
        let dead = entry(Status::Dead, 3);
        assert_eq!(
            decide(Some(&dead), 2, 0, RESEND),
            Claim::HandOff {
                to: HandOffTo::DeadLetter,
                state: dead.failure.clone().expect("failure"),
            }
        );
    }

    #[test]
    fn a_dead_or_held_delivery_is_sent_again_only_by_a_replay() {
        for status in [Status::Dead, Status::Unknown] {
            let finished = entry(status, 4);
            assert_eq!(
                decide(Some(&finished), 0, 0, RESEND),
                Claim::Skip(Skip::Finished)
            );
            assert_eq!(
                decide(Some(&finished), 4, 1, RESEND),
                send(seen(status, 4), false)
            );
        }
    }

    #[test]
    fn a_send_cut_short_is_an_unknown_outcome_resent_or_held() {
        let sending = entry(Status::Sending, 2);
        assert_eq!(
            decide(Some(&sending), 1, 0, UnknownOutcome::Resend),
            send(seen(Status::Sending, 2), true)
        );
        assert_eq!(
            decide(Some(&sending), 1, 0, UnknownOutcome::Hold),
            Claim::HoldUnknown {
                seen: Seen {
                    status: Status::Sending,
                    attempts: 2
                }
            }
        );
        // An older record of a delivery that another record is sending.
        assert_eq!(
            decide(Some(&sending), 0, 0, RESEND),
            Claim::Skip(Skip::Superseded)
        );
    }
}
