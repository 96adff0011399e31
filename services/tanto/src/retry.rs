//! Why an attempt failed, the retry tiers a delivery moves through, and the
//! retry state it carries between them.
//!
//! A record on a retry or dead-letter topic is the delivery message exactly
//! as the notifier wrote it; everything the mailer adds is in headers. So
//! any such record can be sent again as it is, by the mailer or by an
//! operator.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::Headers;

use crate::kafka::{DeadLetterHeaders, header_text};

/// Attempts made before this record was written (all of them failed).
pub const ATTEMPTS: &str = "tanto.attempts";
/// A retry record must not be handled before this time (RFC 3339).
pub const DUE_AT: &str = "tanto.due_at";
pub const FIRST_FAILED_AT: &str = "tanto.first_failed_at";
pub const LAST_FAILED_AT: &str = "tanto.last_failed_at";
pub const ERROR_CLASS: &str = "tanto.error_class";
/// The error of the last attempt, with its causes.
pub const ERROR: &str = "tanto.error";
/// The last reply of the SMTP server, code first, when there was one.
pub const SMTP_REPLY: &str = "tanto.smtp_reply";

/// Every error class a failure can have: a metric label, and what
/// `tanto_mails_dead_lettered_total` is created with at start-up.
pub const ERROR_CLASSES: &[&str] = &[
    "smtp_4xx",
    "smtp_5xx",
    "timeout",
    "tls",
    "connection",
    "session_refused",
    "unknown_outcome",
    "invalid_address",
    "invalid_message",
    "render_error",
    "malformed_delivery",
];

/// What trying again can do about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Later may work: a 4xx reply, a refused, dropped or timed-out
    /// connection, a TLS failure.
    Transient,
    /// Trying again cannot help: a 5xx reply, a template that does not
    /// render, an invalid address.
    Permanent,
    /// The message data went out and no answer came back: the server may or
    /// may not have accepted it.
    Unknown,
}

/// Why one attempt at a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub severity: Severity,
    /// A short stable name for the history, headers and metric labels, such
    /// as `smtp_4xx` or `render_error`.
    pub class: &'static str,
    /// The error with its causes. It may contain a mail address (servers
    /// quote the recipient), so it goes to the history and headers, never to
    /// a log line.
    pub detail: String,
    /// The server's reply, code first, when the failure was a reply.
    pub smtp_reply: Option<String>,
}

impl Failure {
    pub fn permanent(class: &'static str, detail: impl Into<String>) -> Self {
        Self {
            severity: Severity::Permanent,
            class,
            detail: detail.into(),
            smtp_reply: None,
        }
    }
}

/// One retry tier: a topic whose records wait `delay` after their failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub number: usize,
    pub topic: String,
    pub delay: Duration,
}

/// The retry tiers, first to last.
#[derive(Debug, Clone)]
pub struct Schedule {
    tiers: Vec<Tier>,
}

impl Schedule {
    /// Pairs each tier topic with its delay; both lists come from the same
    /// setting, so they have the same length.
    pub fn new(topics: &[String], delays: &[Duration]) -> Self {
        let tiers = topics
            .iter()
            .zip(delays)
            .enumerate()
            .map(|(index, (topic, delay))| Tier {
                number: index + 1,
                topic: topic.clone(),
                delay: *delay,
            })
            .collect();
        Self { tiers }
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The tier a failed delivery read from `topic` goes to next: the first
    /// tier for a delivery from any other topic, `None` after the last tier.
    pub fn after(&self, topic: &str) -> Option<&Tier> {
        match self.tiers.iter().position(|tier| tier.topic == topic) {
            Some(index) => self.tiers.get(index + 1),
            None => self.tiers.first(),
        }
    }
}

/// What a delivery record says about the attempts made before it: nothing
/// for a record the notifier wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Earlier {
    /// Attempts made; the next one is `attempts + 1`.
    pub attempts: i32,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
}

impl Earlier {
    /// Reads the retry headers; a header that is missing or does not parse
    /// counts as absent.
    pub fn from_headers<H: Headers>(headers: Option<&H>) -> Self {
        let Some(headers) = headers else {
            return Self::default();
        };
        let time = |key| header_text(headers, key).and_then(|text| parse_time(&text));
        Self {
            attempts: header_text(headers, ATTEMPTS)
                .and_then(|text| text.parse().ok())
                .unwrap_or(0),
            first_failed_at: time(FIRST_FAILED_AT),
            due_at: time(DUE_AT),
        }
    }
}

/// Where a delivery stands after a failed attempt: what its retry or
/// dead-letter record says in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    pub attempts: i32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    pub error_class: String,
    pub error: String,
    pub smtp_reply: Option<String>,
    /// When the next attempt is due; `None` on a dead-letter record.
    pub due_at: Option<DateTime<Utc>>,
}

impl RetryState {
    pub fn headers(&self) -> DeadLetterHeaders {
        let mut headers = DeadLetterHeaders::new()
            .with(ATTEMPTS, self.attempts)
            .with(FIRST_FAILED_AT, format_time(self.first_failed_at))
            .with(LAST_FAILED_AT, format_time(self.last_failed_at))
            .with(ERROR_CLASS, &self.error_class)
            .with(ERROR, &self.error);
        if let Some(reply) = &self.smtp_reply {
            headers = headers.with(SMTP_REPLY, reply);
        }
        if let Some(due) = self.due_at {
            headers = headers.with(DUE_AT, format_time(due));
        }
        headers
    }
}

/// Millisecond RFC 3339 in UTC, the form of every time tanto writes.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use rdkafka::message::OwnedHeaders;

    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(
            &["r.1".to_string(), "r.2".to_string()],
            &[Duration::from_secs(30), Duration::from_secs(300)],
        )
    }

    #[test]
    fn a_failed_delivery_moves_to_the_next_tier_and_off_the_last() {
        let schedule = schedule();
        let first = schedule.after("tanto.deliveries").expect("first tier");
        assert_eq!((first.number, first.topic.as_str()), (1, "r.1"));
        assert_eq!(first.delay, Duration::from_secs(30));
        let second = schedule.after("r.1").expect("second tier");
        assert_eq!((second.number, second.topic.as_str()), (2, "r.2"));
        assert_eq!(schedule.after("r.2"), None);
        assert_eq!(Schedule::new(&[], &[]).after("tanto.deliveries"), None);
    }

    #[test]
    fn the_retry_state_round_trips_through_headers() {
        let first = parse_time("2026-12-03T01:00:00.000Z").expect("time");
        let state = RetryState {
            attempts: 2,
            first_failed_at: first,
            last_failed_at: first + chrono::Duration::seconds(31),
            error_class: "smtp_4xx".into(),
            error: "transient error (451): try later".into(),
            smtp_reply: Some("451 4.3.0 try later".into()),
            due_at: Some(first + chrono::Duration::seconds(331)),
        };
        let headers: OwnedHeaders = state.headers().to_kafka();
        let earlier = Earlier::from_headers(Some(&headers));
        assert_eq!(earlier.attempts, 2);
        assert_eq!(earlier.first_failed_at, Some(first));
        assert_eq!(earlier.due_at, state.due_at);
        assert_eq!(
            header_text(&headers, SMTP_REPLY).as_deref(),
            Some("451 4.3.0 try later")
        );
        assert_eq!(
            header_text(&headers, DUE_AT).as_deref(),
            Some("2026-12-03T01:05:31.000Z")
        );
    }

    #[test]
    fn a_record_without_retry_headers_has_no_earlier_attempts() {
        assert_eq!(
            Earlier::from_headers::<OwnedHeaders>(None),
            Earlier::default()
        );
        let garbage = DeadLetterHeaders::new()
            .with(ATTEMPTS, "many")
            .with(DUE_AT, "soon")
            .to_kafka();
        assert_eq!(Earlier::from_headers(Some(&garbage)), Earlier::default());
    }
}
