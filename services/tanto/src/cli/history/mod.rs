//! `tanto history`: the send history (メール送信履歴) as the ledger keeps it,
//! one row per delivery (docs/mailer.md, "Send history").
//!
//! Pages are read newest first by keyset on (first attempt, delivery id),
//! so a page never repeats or skips a row however many arrive meanwhile;
//! the cursor printed under a page names where the next one starts.

mod cursor;
mod list;
mod show;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

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
        }) => show::show(settings, &delivery_id, html, json).await,
        None => list::list(settings, &args.list).await,
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

fn label(class: &str) -> String {
    RecipientClass::parse(class).map_or_else(|| class.to_string(), |c| c.label().to_string())
}

fn time_text(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn or_dash(text: &Option<String>) -> String {
    text.clone().unwrap_or_else(|| "-".into())
}
