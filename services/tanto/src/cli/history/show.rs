//! `tanto history show`: one delivery, whole.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Delivery, LIST_COLUMNS, label, or_dash, time_text};
use crate::cli::table::{Table, shorten};
use crate::cli::{Usage, connect, print_json, say};
use crate::config::Settings;

/// One delivery as `history show` prints it.
#[derive(Debug, Serialize)]
struct Record {
    #[serde(flatten)]
    delivery: Delivery,
    recipient_name: String,
    event_type: String,
    replay_count: i32,
    unknown_outcomes: i32,
    first_attempt_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    first_failed_at: Option<DateTime<Utc>>,
    last_failed_at: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    last_smtp_reply: Option<String>,
    body_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_html: Option<String>,
    attempt_log: Vec<AttemptRow>,
}

/// One attempt, from `delivery_attempts` (V5).
#[derive(Debug, Serialize)]
struct AttemptRow {
    attempt: i32,
    replay_count: i32,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// sending (still, or its process died), sent, retrying, dead, unknown.
    outcome: String,
    error_class: Option<String>,
    error: Option<String>,
    smtp_reply: Option<String>,
}

impl AttemptRow {
    fn of(row: &Row) -> Self {
        Self {
            attempt: row.get("attempt"),
            replay_count: row.get("replay_count"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            outcome: row.get("outcome"),
            error_class: row.get("error_class"),
            error: row.get("error"),
            smtp_reply: row.get("smtp_reply"),
        }
    }
}

pub(super) async fn show(
    settings: &Settings,
    id: &str,
    html: bool,
    json: bool,
) -> anyhow::Result<()> {
    let delivery_id: Uuid = id.trim().parse().map_err(|_| {
        Usage(format!(
            "'{id}' is not a delivery id; `tanto history` shows them (a UUID)"
        ))
    })?;
    let pool = connect(settings).await?;
    let client = pool.get().await.context("Failed to reach the database")?;
    let row = client
        .query_opt(
            &format!(
                "SELECT {LIST_COLUMNS}, recipient_name, event_type, replay_count, \
                 unknown_outcomes, last_attempt_at, sent_at, first_failed_at, last_failed_at, \
                 next_attempt_at, last_error, last_smtp_reply, body_text, body_html \
                 FROM deliveries WHERE delivery_id = $1"
            ),
            &[&delivery_id],
        )
        .await
        .context("Failed to read the send history")?
        .with_context(|| {
            format!(
                "no delivery {delivery_id} in the send history; it was never attempted, or the \
                 history retention deleted it"
            )
        })?;
    let record = Record {
        delivery: Delivery::of(&row),
        recipient_name: row.get("recipient_name"),
        event_type: row.get("event_type"),
        replay_count: row.get("replay_count"),
        unknown_outcomes: row.get("unknown_outcomes"),
        first_attempt_at: row.get("created_at"),
        last_attempt_at: row.get("last_attempt_at"),
        sent_at: row.get("sent_at"),
        first_failed_at: row.get("first_failed_at"),
        last_failed_at: row.get("last_failed_at"),
        next_attempt_at: row.get("next_attempt_at"),
        last_error: row.get("last_error"),
        last_smtp_reply: row.get("last_smtp_reply"),
        body_text: row.get("body_text"),
        body_html: if html { row.get("body_html") } else { None },
        attempt_log: attempts_of(&client, delivery_id).await?,
    };
    if json {
        return print_json(&record);
    }
    say(&record_text(&record))
}

async fn attempts_of(
    client: &deadpool_postgres::Client,
    delivery_id: Uuid,
) -> anyhow::Result<Vec<AttemptRow>> {
    let rows = client
        .query(
            "SELECT attempt, replay_count, started_at, finished_at, outcome, error_class, error,
                    smtp_reply
             FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
            &[&delivery_id],
        )
        .await
        .context("Failed to read the attempts of a delivery")?;
    Ok(rows.iter().map(AttemptRow::of).collect())
}

fn attempts_table(attempts: &[AttemptRow]) -> String {
    let mut table = Table::new(&[
        "  #",
        "REPLAY",
        "STARTED (UTC)",
        "OUTCOME",
        "ERROR",
        "SMTP REPLY",
    ]);
    for attempt in attempts {
        let error = match (&attempt.error_class, &attempt.error) {
            (Some(class), Some(error)) => format!("{class}: {}", shorten(error, 60)),
            (Some(class), None) => class.clone(),
            _ => "-".into(),
        };
        table.row(vec![
            format!("  {}", attempt.attempt),
            attempt.replay_count.to_string(),
            time_text(attempt.started_at),
            attempt.outcome.clone(),
            error,
            or_dash(&attempt.smtp_reply),
        ]);
    }
    table.render()
}

fn record_text(record: &Record) -> String {
    let d = &record.delivery;
    let when = |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.to_rfc3339());
    let classes: Vec<String> = d.recipient_classes.iter().map(|c| label(c)).collect();
    let fields = [
        ("result", format!("{} ({})", d.result, d.status)),
        ("tenant", d.tenant_id.clone()),
        ("event", format!("{} ({})", d.event_id, record.event_type)),
        ("transaction", d.transaction_number.clone()),
        ("mail", format!("{} {}", d.management_number, d.mail_name)),
        ("sender", or_dash(&d.sender)),
        (
            "recipient",
            format!("{} {}", d.recipient_address, record.recipient_name),
        ),
        ("classes", classes.join(", ")),
        ("subject", or_dash(&d.subject)),
        ("attempts", d.attempts.to_string()),
        ("unknown outcomes", record.unknown_outcomes.to_string()),
        ("replays", record.replay_count.to_string()),
        ("first attempt", record.first_attempt_at.to_rfc3339()),
        ("last attempt", when(record.last_attempt_at)),
        ("sent", when(record.sent_at)),
        ("first failure", when(record.first_failed_at)),
        ("last failure", when(record.last_failed_at)),
        ("next attempt", when(record.next_attempt_at)),
        ("last error", failure_text(record)),
        ("smtp reply", or_dash(&record.last_smtp_reply)),
    ];
    let mut lines = vec![format!("delivery {}", d.delivery_id)];
    lines.extend(
        fields
            .iter()
            .map(|(name, value)| format!("{:<18}{}", format!("{name}:"), value.trim())),
    );
    lines.push("attempts:".into());
    if record.attempt_log.is_empty() {
        lines.push("  none recorded (attempts before the V5 migration are not)".into());
    } else {
        lines.push(attempts_table(&record.attempt_log));
    }
    lines.push("text body:".into());
    lines.push(or_dash(&record.body_text));
    if let Some(html) = &record.body_html {
        lines.push("html body:".into());
        lines.push(html.clone());
    }
    lines.join("\n")
}

fn failure_text(record: &Record) -> String {
    match (&record.delivery.last_error_class, &record.last_error) {
        (Some(class), Some(error)) => format!("{class}: {error}"),
        (Some(class), None) => class.clone(),
        _ => "-".into(),
    }
}
