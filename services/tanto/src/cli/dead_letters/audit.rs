//! `audit`: every replay, newest first.

use crate::audit::{self, ReplayRecord};
use crate::cli::table::Table;
use crate::cli::{Usage, connect, print_json, say};
use crate::config::Settings;
use crate::dead_letters::Selection;

pub(super) async fn show_audit(settings: &Settings, limit: i64, json: bool) -> anyhow::Result<()> {
    if limit < 1 {
        return Err(Usage("--limit must be at least 1".into()).into());
    }
    let pool = connect(settings).await?;
    let replays = audit::list(&pool, limit).await?;
    if json {
        return print_json(&replays);
    }
    if replays.is_empty() {
        return say("no replays yet");
    }
    let mut table = Table::new(&[
        "REPLAY",
        "STARTED",
        "ACTOR",
        "KIND",
        "CHOSEN",
        "REPLAYED",
        "SKIPPED",
        "STATUS",
        "SELECTION",
    ]);
    for record in &replays {
        table.row(vec![
            record.replay_id.to_string(),
            record.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            record.actor.clone(),
            record.kind.clone(),
            record.chosen.to_string(),
            record.replayed.to_string(),
            record.skipped.to_string(),
            status_text(record),
            selection_text(record),
        ]);
    }
    say(&table.render())
}

fn status_text(record: &ReplayRecord) -> String {
    let mut status = record.status.as_str().to_string();
    if record.forced {
        status.push_str(" (forced)");
    }
    status
}

fn selection_text(record: &ReplayRecord) -> String {
    serde_json::from_value::<Selection>(record.selection.clone())
        .map_or_else(|_| record.selection.to_string(), |s| s.to_string())
}
