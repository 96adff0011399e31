//! `tanto history`: the send history (メール送信履歴) as the ledger keeps it,
//! one row per delivery (docs/mailer.md, "Send history").
//!
//! Pages are read newest first by keyset on (first attempt, delivery id),
//! so a page never repeats or skips a row however many arrive meanwhile;
//! the cursor printed under a page names where the next one starts.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::table::{Table, shorten};
use super::time::parse_time;
use super::{Usage, connect, print_json, say};
use crate::catalog::RecipientClass;
use crate::config::Settings;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: Option<HistoryCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Debug, Subcommand)]
enum HistoryCommand {
    /// One delivery: every column, the rendered text (and with --html the
    /// HTML) body, and every attempt with its error.
    Show {
        /// The delivery id, as `history` shows it.
        delivery_id: String,
        /// Also print the HTML body.
        #[arg(long)]
        html: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The business.
    #[arg(long)]
    tenant: Option<String>,
    /// The transaction event's id.
    #[arg(long, value_name = "ID")]
    event: Option<String>,
    /// The transaction number.
    #[arg(long, value_name = "NUMBER")]
    transaction: Option<String>,
    /// The mail's management number, e.g. 5-1-2.
    #[arg(long, value_name = "NUMBER")]
    mail: Option<String>,
    /// Recipients reached through this class, e.g. company_wide.
    #[arg(long)]
    class: Option<String>,
    /// This recipient address.
    #[arg(long)]
    address: Option<String>,
    /// sent, failed (dead or unknown), dead, unknown, or in_progress
    /// (sending or retrying).
    #[arg(long)]
    result: Option<String>,
    /// First attempted at or after TIME: RFC 3339, a date (UTC), or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// First attempted before TIME.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Rows per page.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Start after this cursor, as printed under the previous page.
    #[arg(long)]
    cursor: Option<String>,
    /// One row per event and mail, with its recipients listed by class.
    #[arg(long)]
    by_mail: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(settings: &Settings, args: HistoryArgs) -> anyhow::Result<()> {
    match args.command {
        Some(HistoryCommand::Show {
            delivery_id,
            html,
            json,
        }) => show(settings, &delivery_id, html, json).await,
        None => list(settings, &args.list).await,
    }
}

/// Where a page starts: after the row (or mail) first attempted at `at`
/// with key `key`. Printed as hex so that scripts treat it as opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    at: DateTime<Utc>,
    key: String,
}

impl Cursor {
    fn encode(&self) -> String {
        let raw = format!("{}|{}", self.at.timestamp_micros(), self.key);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn decode(text: &str) -> Result<Self, Usage> {
        let malformed = || {
            Usage(format!(
                "--cursor '{text}' is not a cursor; copy the one printed under the previous page"
            ))
        };
        if !text.len().is_multiple_of(2) || !text.is_ascii() {
            return Err(malformed());
        }
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
            .collect();
        let raw = bytes
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(malformed)?;
        let (micros, key) = raw.split_once('|').ok_or_else(malformed)?;
        let at = micros
            .parse()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(malformed)?;
        Ok(Self {
            at,
            key: key.to_string(),
        })
    }
}

/// The statuses a `--result` stands for.
fn statuses(result: &str) -> Result<Vec<&'static str>, Usage> {
    Ok(match result {
        "sent" => vec!["sent"],
        "failed" => vec!["dead", "unknown"],
        "dead" => vec!["dead"],
        "unknown" => vec!["unknown"],
        "in_progress" => vec!["sending", "retrying"],
        other => {
            return Err(Usage(format!(
                "--result '{other}' is not a result; use sent, failed, dead, unknown or \
                 in_progress"
            )));
        }
    })
}

/// A WHERE clause and its parameters, built from the filters given.
#[derive(Default)]
struct Query {
    conditions: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Query {
    /// Adds a parameter and returns its placeholder, `$n`.
    fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// Adds a condition whose `?` is `value`.
    fn with(&mut self, condition: &str, value: impl ToSql + Sync + Send + 'static) {
        let placeholder = self.param(value);
        self.conditions.push(condition.replace('?', &placeholder));
    }

    fn where_clause(&self) -> String {
        if self.conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.conditions.join(" AND "))
        }
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

impl ListArgs {
    /// The filters as SQL conditions on `deliveries`.
    fn query(&self, now: DateTime<Utc>) -> Result<Query, Usage> {
        if self.limit < 1 {
            return Err(Usage("--limit must be at least 1".into()));
        }
        let mut query = Query::default();
        let text = |value: &Option<String>| value.clone();
        if let Some(tenant) = text(&self.tenant) {
            query.with("tenant_id = ?", tenant);
        }
        if let Some(event) = text(&self.event) {
            query.with("event_id = ?", event);
        }
        if let Some(number) = text(&self.transaction) {
            query.with("transaction_number = ?", number);
        }
        if let Some(mail) = text(&self.mail) {
            query.with("management_number = ?", mail);
        }
        if let Some(class) = text(&self.class) {
            if RecipientClass::parse(&class).is_none() {
                let known: Vec<&str> = RecipientClass::ALL.iter().map(|c| c.as_str()).collect();
                return Err(Usage(format!(
                    "--class '{class}' is not a recipient class; use one of {}",
                    known.join(", ")
                )));
            }
            query.with("? = ANY(recipient_classes)", class);
        }
        if let Some(address) = &self.address {
            let address = crate::delivery::normalize_address(address);
            query.with("lower(recipient_address) = ?", address);
        }
        if let Some(result) = &self.result {
            let statuses: Vec<String> = statuses(result)?.into_iter().map(Into::into).collect();
            query.with("status = ANY(?)", statuses);
        }
        let since = self.since.as_deref().map(|t| parse_time("--since", t, now));
        let until = self.until.as_deref().map(|t| parse_time("--until", t, now));
        let (since, until) = (since.transpose()?, until.transpose()?);
        if let (Some(since), Some(until)) = (since, until)
            && since >= until
        {
            return Err(Usage("--since must be before --until".into()));
        }
        if let Some(since) = since {
            query.with("created_at >= ?", since);
        }
        if let Some(until) = until {
            query.with("created_at < ?", until);
        }
        Ok(query)
    }
}

/// One delivery as the history lists it.
#[derive(Debug, Serialize)]
struct Delivery {
    delivery_id: Uuid,
    tenant_id: String,
    event_id: String,
    transaction_number: String,
    management_number: String,
    mail_name: String,
    /// `OK`, `failed`, or `in progress`, as the platform's screen says it.
    result: &'static str,
    status: String,
    subject: Option<String>,
    sender: Option<String>,
    recipient_address: String,
    recipient_classes: Vec<String>,
    /// When it was sent, or else last attempted.
    time: DateTime<Utc>,
    attempts: i32,
    last_error_class: Option<String>,
    #[serde(skip)]
    first_attempt: DateTime<Utc>,
}

const LIST_COLUMNS: &str = "delivery_id, tenant_id, event_id, transaction_number, \
    management_number, mail_name, status, subject, sender, recipient_address, recipient_classes, \
    coalesce(sent_at, last_attempt_at, created_at) AS time, attempts, last_error_class, \
    created_at";

fn result_of(status: &str) -> &'static str {
    match status {
        "sent" => "OK",
        "dead" | "unknown" => "failed",
        _ => "in progress",
    }
}

impl Delivery {
    fn of(row: &Row) -> Self {
        let status: String = row.get("status");
        Self {
            delivery_id: row.get("delivery_id"),
            tenant_id: row.get("tenant_id"),
            event_id: row.get("event_id"),
            transaction_number: row.get("transaction_number"),
            management_number: row.get("management_number"),
            mail_name: row.get("mail_name"),
            result: result_of(&status),
            status,
            subject: row.get("subject"),
            sender: row.get("sender"),
            recipient_address: row.get("recipient_address"),
            recipient_classes: row.get("recipient_classes"),
            time: row.get("time"),
            attempts: row.get("attempts"),
            last_error_class: row.get("last_error_class"),
            first_attempt: row.get("created_at"),
        }
    }
}

#[derive(Debug, Serialize)]
struct ClassRecipients {
    class: String,
    addresses: Vec<String>,
}

/// One mail of one event: its deliveries, with the recipients by class.
#[derive(Debug, Serialize)]
struct Mail {
    tenant_id: String,
    event_id: String,
    transaction_number: String,
    management_number: String,
    mail_name: String,
    /// `OK` when every delivery was sent, `failed` when any failed for good,
    /// else `in progress`.
    result: &'static str,
    subject: Option<String>,
    sender: Option<String>,
    /// The addresses of each class that reached someone, in the platform's
    /// class order.
    recipients: Vec<ClassRecipients>,
    time: DateTime<Utc>,
    deliveries: Vec<Uuid>,
}

#[derive(Debug, Serialize)]
struct Page<T> {
    rows: Vec<T>,
    /// Pass as --cursor for the next page; `None` on the last page.
    next_cursor: Option<String>,
}

async fn list(settings: &Settings, args: &ListArgs) -> anyhow::Result<()> {
    let query = args.query(Utc::now())?;
    let cursor = args.cursor.as_deref().map(Cursor::decode).transpose()?;
    let pool = connect(settings).await?;
    let client = pool.get().await.context("Failed to reach the database")?;
    let deliveries = if args.by_mail {
        read_mails(&client, query, cursor.as_ref(), args.limit).await?
    } else {
        read_deliveries(&client, query, cursor.as_ref(), args.limit).await?
    };
    let next_cursor = deliveries.next_cursor(args.limit);
    match deliveries {
        Rows::Deliveries(rows) => print_page(rows, next_cursor, args.json, deliveries_table),
        Rows::Mails(rows) => print_page(rows, next_cursor, args.json, mails_table),
    }
}

enum Rows {
    Deliveries(Vec<Delivery>),
    Mails(Vec<Mail>),
}

impl Rows {
    /// The cursor after the last row, when the page is full (a full page
    /// may be the last; the next one is then empty).
    fn next_cursor(&self, limit: i64) -> Option<String> {
        let full = |len: usize| i64::try_from(len).is_ok_and(|len| len == limit);
        let cursor = match self {
            Rows::Deliveries(rows) if full(rows.len()) => rows.last().map(|d| Cursor {
                at: d.first_attempt,
                key: d.delivery_id.to_string(),
            }),
            Rows::Mails(rows) if full(rows.len()) => rows.last().map(mail_cursor),
            _ => None,
        };
        cursor.map(|c| c.encode())
    }
}

fn mail_key(tenant: &str, event: &str, number: &str) -> String {
    format!("{tenant}\u{1f}{event}\u{1f}{number}")
}

fn mail_cursor(mail: &Mail) -> Cursor {
    Cursor {
        at: mail.time,
        key: mail_key(&mail.tenant_id, &mail.event_id, &mail.management_number),
    }
}

async fn read_deliveries(
    client: &deadpool_postgres::Client,
    mut query: Query,
    cursor: Option<&Cursor>,
    limit: i64,
) -> anyhow::Result<Rows> {
    if let Some(cursor) = cursor {
        let (at, key) = (query.param(cursor.at), query.param(cursor.key.clone()));
        let after = format!("(created_at, delivery_id::text) < ({at}, {key})");
        query.conditions.push(after);
    }
    let limit = query.param(limit);
    let sql = format!(
        "SELECT {LIST_COLUMNS} FROM deliveries {} \
         ORDER BY created_at DESC, delivery_id::text DESC LIMIT {limit}",
        query.where_clause()
    );
    let rows = client
        .query(&sql, &query.params())
        .await
        .context("Failed to read the send history")?;
    Ok(Rows::Deliveries(rows.iter().map(Delivery::of).collect()))
}

/// Mails: the deliveries that match, grouped by (tenant, event, mail); a
/// mail's time is its first delivery's first attempt.
async fn read_mails(
    client: &deadpool_postgres::Client,
    mut query: Query,
    cursor: Option<&Cursor>,
    limit: i64,
) -> anyhow::Result<Rows> {
    const KEY: &str = "tenant_id || chr(31) || event_id || chr(31) || management_number";
    let mut having = String::new();
    if let Some(cursor) = cursor {
        let (at, key) = (query.param(cursor.at), query.param(cursor.key.clone()));
        having = format!("HAVING (min(created_at), {KEY}) < ({at}, {key})");
    }
    let limit = query.param(limit);
    let sql = format!(
        "SELECT tenant_id, event_id, management_number, min(created_at) AS first_at \
         FROM deliveries {} GROUP BY tenant_id, event_id, management_number {having} \
         ORDER BY first_at DESC, {KEY} DESC LIMIT {limit}",
        query.where_clause()
    );
    let groups = client
        .query(&sql, &query.params())
        .await
        .context("Failed to read the send history")?;
    let keys = |column: usize| -> Vec<String> { groups.iter().map(|g| g.get(column)).collect() };
    let rows = client
        .query(
            &format!(
                "SELECT {LIST_COLUMNS} FROM deliveries \
                 WHERE (tenant_id, event_id, management_number) IN \
                     (SELECT * FROM unnest($1::text[], $2::text[], $3::text[])) \
                 ORDER BY recipient_address"
            ),
            &[&keys(0), &keys(1), &keys(2)],
        )
        .await
        .context("Failed to read the deliveries of the mails")?;
    let mut by_mail: HashMap<String, Vec<Delivery>> = HashMap::new();
    for delivery in rows.iter().map(Delivery::of) {
        let key = mail_key(
            &delivery.tenant_id,
            &delivery.event_id,
            &delivery.management_number,
        );
        by_mail.entry(key).or_default().push(delivery);
    }
    let mails = groups.iter().filter_map(|group| {
        let key = mail_key(group.get(0), group.get(1), group.get(2));
        let deliveries = by_mail.remove(&key).unwrap_or_default();
        mail_of(&deliveries, group.get("first_at"))
    });
    Ok(Rows::Mails(mails.collect()))
}

fn mail_of(deliveries: &[Delivery], time: DateTime<Utc>) -> Option<Mail> {
    let first = deliveries.first()?;
    let results: Vec<&str> = deliveries.iter().map(|d| d.result).collect();
    let result = if results.iter().all(|r| *r == "OK") {
        "OK"
    } else if results.contains(&"failed") {
        "failed"
    } else {
        "in progress"
    };
    let mut recipients = Vec::new();
    for class in RecipientClass::ALL {
        let addresses: Vec<String> = deliveries
            .iter()
            .filter(|d| d.recipient_classes.iter().any(|c| c == class.as_str()))
            .map(|d| d.recipient_address.clone())
            .collect();
        if !addresses.is_empty() {
            recipients.push(ClassRecipients {
                class: class.as_str().to_string(),
                addresses,
            });
        }
    }
    let any =
        |field: fn(&Delivery) -> &Option<String>| deliveries.iter().find_map(|d| field(d).clone());
    Some(Mail {
        tenant_id: first.tenant_id.clone(),
        event_id: first.event_id.clone(),
        transaction_number: first.transaction_number.clone(),
        management_number: first.management_number.clone(),
        mail_name: first.mail_name.clone(),
        result,
        subject: any(|d| &d.subject),
        sender: any(|d| &d.sender),
        recipients,
        time,
        deliveries: deliveries.iter().map(|d| d.delivery_id).collect(),
    })
}

fn print_page<T: Serialize>(
    rows: Vec<T>,
    next_cursor: Option<String>,
    json: bool,
    table: fn(&[T]) -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(&Page { rows, next_cursor });
    }
    if rows.is_empty() {
        return say("no deliveries match");
    }
    say(&table(&rows))?;
    match next_cursor {
        Some(cursor) => say(&format!(
            "{} rows; next page: --cursor {cursor}",
            rows.len()
        )),
        None => say(&format!("{} rows; no more", rows.len())),
    }
}

fn label(class: &str) -> String {
    RecipientClass::parse(class).map_or_else(|| class.to_string(), |c| c.label().to_string())
}

fn time_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn or_dash(text: &Option<String>) -> String {
    text.clone().unwrap_or_else(|| "-".into())
}

fn deliveries_table(rows: &[Delivery]) -> String {
    let mut table = Table::new(&[
        "RESULT",
        "SUBJECT",
        "SENDER",
        "RECIPIENT",
        "NUMBER",
        "MAIL NAME",
        "TIME (UTC)",
        "DELIVERY",
    ]);
    for row in rows {
        let classes: Vec<String> = row.recipient_classes.iter().map(|c| label(c)).collect();
        table.row(vec![
            row.result.to_string(),
            shorten(&or_dash(&row.subject), 40),
            or_dash(&row.sender),
            format!("{} ({})", row.recipient_address, classes.join(", ")),
            row.management_number.clone(),
            row.mail_name.clone(),
            time_text(row.time),
            row.delivery_id.to_string(),
        ]);
    }
    table.render()
}

fn mails_table(rows: &[Mail]) -> String {
    let mut table = Table::new(&[
        "RESULT",
        "SUBJECT",
        "SENDER",
        "NUMBER",
        "MAIL NAME",
        "TIME (UTC)",
        "RECIPIENTS",
    ]);
    for row in rows {
        let recipients: Vec<String> = row
            .recipients
            .iter()
            .map(|r| format!("{}: {}", label(&r.class), r.addresses.join(", ")))
            .collect();
        table.row(vec![
            row.result.to_string(),
            shorten(&or_dash(&row.subject), 40),
            or_dash(&row.sender),
            row.management_number.clone(),
            row.mail_name.clone(),
            time_text(row.time),
            recipients.join("; "),
        ]);
    }
    table.render()
}

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

async fn show(settings: &Settings, id: &str, html: bool, json: bool) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let cursor = Cursor {
            at: "2026-12-03T01:02:03.456789Z".parse().expect("time"),
            key: "acme\u{1f}e-1\u{1f}5-1-2".into(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).ok(), Some(cursor));
        for bad in ["", "zz", "abc", "7c"] {
            let err = Cursor::decode(bad).unwrap_err();
            assert!(err.0.contains("is not a cursor"), "{bad}: {err}");
        }
    }

    #[test]
    fn results_name_statuses() {
        assert_eq!(statuses("failed").expect("failed"), ["dead", "unknown"]);
        let err = statuses("ok").unwrap_err();
        assert!(err.0.starts_with("--result 'ok' is not a result"), "{err}");
    }
}
