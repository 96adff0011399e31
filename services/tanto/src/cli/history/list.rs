//! `tanto history`: a page of deliveries, or of mails.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::cursor::Cursor;
use super::{Delivery, LIST_COLUMNS, ListArgs, label, or_dash, time_text};
use crate::catalog::RecipientClass;
use crate::cli::table::{Table, shorten};
use crate::cli::time::parse_time;
use crate::cli::{Usage, connect, print_json, say};
use crate::config::Settings;

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

pub(super) async fn list(settings: &Settings, args: &ListArgs) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_statuses() {
        assert_eq!(statuses("failed").expect("failed"), ["dead", "unknown"]);
        let err = statuses("ok").unwrap_err();
        assert!(err.0.starts_with("--result 'ok' is not a result"), "{err}");
    }
}
