//! `list` and `show`: dead letters as a person or a script reads them.

use std::collections::BTreeMap;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde::Serialize;

use super::Source;
use crate::cli::table::{Table, shorten};
use crate::cli::{connect, print_json, say};
use crate::config::Settings;
use crate::dead_letters::{self, DeadLetter, DeliveryFacts, RecordId, Selection};

/// A dead letter as `list --json` prints it.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    replayed_by: Option<i64>,
}

pub(super) async fn list(
    settings: &Settings,
    source: Source<'_>,
    selection: &Selection,
    json: bool,
) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let letters = dead_letters::read(
        &settings.kafka.brokers,
        source.topic,
        source.kind,
        selection,
    )
    .await?;
    let replayed = replayed_by(&pool, source, &letters).await?;
    if json {
        let listed: Vec<Listed<'_>> = letters
            .iter()
            .map(|letter| Listed {
                letter,
                replayed_by: replayed.get(&letter.id).copied(),
            })
            .collect();
        return print_json(&listed);
    }
    if letters.is_empty() {
        return say(&format!(
            "no dead letters on {} match {selection}",
            source.topic
        ));
    }
    say(&letters_table(&letters, &replayed))?;
    say(&format!(
        "{} dead letters on {}, {} replayed before",
        letters.len(),
        source.topic,
        replayed.len()
    ))
}

pub(super) async fn replayed_by(
    pool: &Pool,
    source: Source<'_>,
    letters: &[DeadLetter],
) -> anyhow::Result<BTreeMap<RecordId, i64>> {
    let ids: Vec<RecordId> = letters.iter().map(|letter| letter.id).collect();
    crate::audit::replayed_before(pool, source.topic, &ids).await
}

pub(super) fn letters_table(letters: &[DeadLetter], replayed: &BTreeMap<RecordId, i64>) -> String {
    if letters.iter().any(|letter| letter.delivery.is_some()) {
        return deliveries_table(letters, replayed);
    }
    let mut table = Table::new(&[
        "ID",
        "SET ASIDE (UTC)",
        "REASON",
        "TENANT",
        "SOURCE",
        "REPLAYED",
        "MESSAGE",
    ]);
    for letter in letters {
        table.row(vec![
            letter.id.to_string(),
            letter
                .failed_at
                .map_or("-".into(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string()),
            dash(&letter.reason),
            letter.tenant.clone().unwrap_or_else(|| "-".into()),
            letter.source.as_ref().map_or("-".into(), source_text),
            replayed
                .get(&letter.id)
                .map_or("-".into(), |id| format!("replay {id}")),
            shorten(&letter.message, 70),
        ]);
    }
    table.render()
}

/// Dead-lettered deliveries: what a person needs to choose a replay.
fn deliveries_table(letters: &[DeadLetter], replayed: &BTreeMap<RecordId, i64>) -> String {
    let mut table = Table::new(&[
        "ID",
        "SET ASIDE (UTC)",
        "REASON",
        "TENANT",
        "MAIL",
        "RECIPIENT",
        "ATTEMPTS",
        "REPLAYED",
        "ERROR",
    ]);
    for letter in letters {
        let delivery = letter.delivery.as_ref();
        let facts = |field: fn(&DeliveryFacts) -> String| delivery.map_or("-".into(), field);
        table.row(vec![
            letter.id.to_string(),
            letter
                .failed_at
                .map_or("-".into(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string()),
            dash(&letter.reason),
            letter.tenant.clone().unwrap_or_else(|| "-".into()),
            facts(|d| d.mail.clone()),
            facts(|d| d.address.clone()),
            facts(|d| d.attempts.to_string()),
            replayed
                .get(&letter.id)
                .map_or("-".into(), |id| format!("replay {id}")),
            shorten(&letter.message, 60),
        ]);
    }
    table.render()
}

pub(super) fn source_text(source: &dead_letters::SourcePosition) -> String {
    match (source.partition, source.offset) {
        (Some(partition), Some(offset)) => format!("{} {partition}:{offset}", source.topic),
        _ => source.topic.clone(),
    }
}

pub(super) fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// A dead letter as `show --json` prints it.
#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    replayed_by: Option<i64>,
    key: Option<String>,
    headers: BTreeMap<&'a str, &'a str>,
    /// The payload as JSON when it parses, else as text.
    payload: serde_json::Value,
}

pub(super) async fn show(
    settings: &Settings,
    source: Source<'_>,
    id: RecordId,
    json: bool,
) -> anyhow::Result<()> {
    let pool = connect(settings).await?;
    let selection = Selection::Ids([id].into());
    let letters = dead_letters::read(
        &settings.kafka.brokers,
        source.topic,
        source.kind,
        &selection,
    )
    .await?;
    let replayed = replayed_by(&pool, source, &letters).await?;
    let letter = letters
        .first()
        .context("the dead letter vanished while it was read")?;
    let shown = Shown {
        letter,
        replayed_by: replayed.get(&id).copied(),
        key: letter
            .key
            .as_ref()
            .map(|key| String::from_utf8_lossy(key).into_owned()),
        headers: letter
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        payload: serde_json::from_slice(&letter.payload).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&letter.payload).into_owned())
        }),
    };
    if json {
        return print_json(&shown);
    }
    let mut lines = vec![format!("dead letter {id} on {}", source.topic)];
    let mut field = |name: &str, value: String| lines.push(format!("{name:<11}{value}"));
    field("reason:", dash(&letter.reason));
    field("message:", dash(&letter.message));
    field(
        "tenant:",
        letter.tenant.clone().unwrap_or_else(|| "-".into()),
    );
    field(
        "source:",
        letter.source.as_ref().map_or("-".into(), source_text),
    );
    field(
        "set aside:",
        letter.failed_at.map_or("-".into(), |at| at.to_rfc3339()),
    );
    field(
        "replayed:",
        shown
            .replayed_by
            .map_or("not yet".into(), |id| format!("by replay {id}")),
    );
    field("key:", shown.key.clone().unwrap_or_else(|| "-".into()));
    lines.push("headers:".into());
    lines.extend(shown.headers.iter().map(|(k, v)| format!("  {k}: {v}")));
    lines.push("payload:".into());
    lines.push(match &shown.payload {
        serde_json::Value::String(text) => text.clone(),
        value => serde_json::to_string_pretty(value).unwrap_or_default(),
    });
    say(&lines.join("\n"))
}
