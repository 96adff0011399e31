//! `tanto dead-letters`: list, show and replay dead letters of each kind,
//! and read the replay audit. The commands of a kind are the same for every
//! kind ([`KindCommand`]); only the topic and the [`DeadLetterKind`] differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use clap::{Args, Subcommand};
use deadpool_postgres::Pool;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::table::{Table, shorten};
use super::{Usage, connect, print_json, say};
use crate::audit::{self, ReplayLock, ReplayRecord, RunStatus};
use crate::config::Settings;
use crate::dead_letters::{
    self, DeadLetter, DeadLetterKind, EventDeadLetters, Filter, RecordId, Selection,
};
use crate::replay::{self, DEFAULT_RATE, PUBLISH_TIMEOUT, Plan, Request, Summary};

static EVENTS: EventDeadLetters = EventDeadLetters;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Events the notifiers could not route (tanto.events.dlq): malformed,
    /// unknown type or tenant, wrong topic.
    Events {
        #[command(subcommand)]
        command: KindCommand,
    },
    /// Every replay: who ran it, when, what it chose, and how many records
    /// it replayed and skipped. Newest first.
    Audit {
        /// How many replays to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KindCommand {
    /// List dead letters: all of them, or those that ids or a filter choose.
    List {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter with its headers, key and payload.
    Show {
        /// The dead letter's id, PARTITION:OFFSET (as `list` shows it).
        id: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to the topic they came from. A dead letter
    /// replayed before is skipped unless --force.
    Replay(ReplayArgs),
}

/// Which dead letters: ids, or a filter whose every given field must match.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Dead-letter ids, PARTITION:OFFSET (as `list` shows them).
    #[arg(value_name = "ID")]
    ids: Vec<String>,
    /// The tenant named in the payload (a payload that is not JSON names none).
    #[arg(long)]
    tenant: Option<String>,
    /// Why it was set aside, e.g. unknown_tenant.
    #[arg(long)]
    reason: Option<String>,
    /// The topic it was read from, e.g. commerce.orders.
    #[arg(long, value_name = "TOPIC")]
    source_topic: Option<String>,
    /// Set aside at or after TIME: RFC 3339, a date (UTC), or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Set aside before TIME: RFC 3339, a date (UTC), or an age (30m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Every dead letter; a replay needs ids, a filter or this.
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Print what would be replayed and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask for confirmation (needed when not run from a terminal).
    #[arg(short, long)]
    yes: bool,
    /// Records republished per second.
    #[arg(long, default_value_t = DEFAULT_RATE)]
    rate: u32,
    /// Replay records that an earlier replay already replayed.
    #[arg(long)]
    force: bool,
    /// Who is replaying, for the audit; by default the operating-system user.
    #[arg(long)]
    actor: Option<String>,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

/// A kind of dead letter and the topic that holds it.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    kind: &'static dyn DeadLetterKind,
    topic: &'a str,
}

pub(super) async fn run(settings: &Settings, command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::Events { command } => {
            let source = Source {
                kind: &EVENTS,
                topic: &settings.kafka.topics.events_dlq,
            };
            run_kind(settings, source, command).await
        }
        DeadLettersCommand::Audit { limit, json } => show_audit(settings, limit, json).await,
    }
}

async fn run_kind(
    settings: &Settings,
    source: Source<'_>,
    command: KindCommand,
) -> anyhow::Result<()> {
    match command {
        KindCommand::List { selection, json } => {
            let selection = selection.parse(source.kind, Utc::now())?;
            list(settings, source, &selection, json).await
        }
        KindCommand::Show { id, json } => {
            let id: RecordId = id.parse().map_err(Usage)?;
            show(settings, source, id, json).await
        }
        KindCommand::Replay(args) => replay_command(settings, source, args).await,
    }
}

impl SelectionArgs {
    /// Checks the arguments; no ids and no filter select every record.
    fn parse(&self, kind: &dyn DeadLetterKind, now: DateTime<Utc>) -> Result<Selection, Usage> {
        let filter = Filter {
            tenant: self.tenant.clone(),
            reason: self.reason.clone(),
            source_topic: self.source_topic.clone(),
            since: self
                .since
                .as_deref()
                .map(|t| parse_time("--since", t, now))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| parse_time("--until", t, now))
                .transpose()?,
        };
        if let Some(reason) = &filter.reason
            && !kind.reasons().contains(&reason.as_str())
        {
            return Err(Usage(format!(
                "--reason '{reason}' is not a reason of dead-lettered {}; use one of {}",
                kind.name(),
                kind.reasons().join(", ")
            )));
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until)
            && since >= until
        {
            return Err(Usage("--since must be before --until".into()));
        }
        let given = [!self.ids.is_empty(), !filter.is_empty(), self.all];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(Usage(
                "give ids, a filter or --all, not two of them together".into(),
            ));
        }
        if !self.ids.is_empty() {
            let ids: Result<BTreeSet<RecordId>, String> =
                self.ids.iter().map(|id| id.parse()).collect();
            return Ok(Selection::Ids(ids.map_err(Usage)?));
        }
        if filter.is_empty() {
            Ok(Selection::All)
        } else {
            Ok(Selection::Filter(filter))
        }
    }
}

/// An RFC 3339 time, a date (midnight UTC), or an age before `now`
/// (`30m`, `2h`, `7d`).
fn parse_time(flag: &str, raw: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Usage> {
    if let Ok(time) = DateTime::parse_from_rfc3339(raw) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    let age = raw
        .char_indices()
        .last()
        .and_then(|(at, unit)| Some((raw[..at].parse::<i64>().ok()?, unit)))
        .and_then(|(n, unit)| match unit {
            's' => TimeDelta::try_seconds(n),
            'm' => TimeDelta::try_minutes(n),
            'h' => TimeDelta::try_hours(n),
            'd' => TimeDelta::try_days(n),
            _ => None,
        });
    match age {
        Some(age) if age >= TimeDelta::zero() => Ok(now - age),
        _ => Err(Usage(format!(
            "{flag} '{raw}' is not a time; write 2026-12-03T10:00:00+09:00, 2026-12-03 or an \
             age such as 30m, 2h, 7d"
        ))),
    }
}

/// A dead letter as `list --json` prints it.
#[derive(Debug, Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    letter: &'a DeadLetter,
    replayed_by: Option<i64>,
}

async fn list(
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

async fn replayed_by(
    pool: &Pool,
    source: Source<'_>,
    letters: &[DeadLetter],
) -> anyhow::Result<BTreeMap<RecordId, i64>> {
    let ids: Vec<RecordId> = letters.iter().map(|letter| letter.id).collect();
    audit::replayed_before(pool, source.topic, &ids).await
}

fn letters_table(letters: &[DeadLetter], replayed: &BTreeMap<RecordId, i64>) -> String {
    let mut table = Table::new(&[
        "ID",
        "SET ASIDE",
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

fn source_text(source: &dead_letters::SourcePosition) -> String {
    match (source.partition, source.offset) {
        (Some(partition), Some(offset)) => format!("{} {partition}:{offset}", source.topic),
        _ => source.topic.clone(),
    }
}

fn dash(text: &str) -> String {
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

async fn show(
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

async fn replay_command(
    settings: &Settings,
    source: Source<'_>,
    args: ReplayArgs,
) -> anyhow::Result<()> {
    let selection = args.selection.parse(source.kind, Utc::now())?;
    if selection == Selection::All && !args.selection.all {
        return Err(Usage(
            "say which dead letters to replay: ids, a filter (--tenant, --reason, \
             --source-topic, --since, --until) or --all"
                .into(),
        )
        .into());
    }
    if args.rate == 0 {
        return Err(Usage("--rate must be at least 1 record per second".into()).into());
    }
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.dry_run && !args.yes && !interactive {
        return Err(Usage("replaying needs --yes when not run from a terminal".into()).into());
    }
    let pool = connect(settings).await?;
    let chosen = dead_letters::read(
        &settings.kafka.brokers,
        source.topic,
        source.kind,
        &selection,
    )
    .await?;
    if chosen.is_empty() {
        anyhow::bail!(
            "no dead letter on {} matches {selection}; `tanto dead-letters {} list` shows them",
            source.topic,
            source.kind.name()
        );
    }
    if args.dry_run {
        let plan = replay::plan(&pool, source.kind, source.topic, chosen, args.force).await?;
        return print_dry_run(source, &plan, args.json);
    }
    let lock = ReplayLock::acquire(&pool, source.topic).await?;
    let outcome = replay_locked(
        settings,
        &pool,
        source,
        &selection,
        &args,
        chosen,
        interactive,
    )
    .await;
    lock.release().await?;
    let Some(summary) = outcome? else {
        return say("nothing was replayed");
    };
    if args.json {
        print_json(&summary)?;
    } else {
        say(&summary_line(&summary))?;
    }
    match summary.status {
        RunStatus::Failed => anyhow::bail!(
            "replay {} failed after {} of {}: {}; fix the cause and run the same command again",
            summary.replay_id,
            summary.replayed,
            summary.chosen - summary.skipped,
            summary.error.as_deref().unwrap_or("unknown error")
        ),
        RunStatus::Interrupted => anyhow::bail!(
            "replay {} was interrupted after {} of {}; run the same command again to replay the rest",
            summary.replay_id,
            summary.replayed,
            summary.chosen - summary.skipped
        ),
        RunStatus::Finished | RunStatus::Running => Ok(()),
    }
}

/// Plans, confirms and runs a replay while the topic's lock is held;
/// `None` when the operator declined.
async fn replay_locked(
    settings: &Settings,
    pool: &Pool,
    source: Source<'_>,
    selection: &Selection,
    args: &ReplayArgs,
    chosen: Vec<DeadLetter>,
    interactive: bool,
) -> anyhow::Result<Option<Summary>> {
    let plan = replay::plan(pool, source.kind, source.topic, chosen, args.force).await?;
    if !args.yes && !plan.to_replay.is_empty() && !confirm(source, &plan, args.rate)? {
        return Ok(None);
    }
    let actor = args.actor.clone().unwrap_or_else(os_user);
    let request = Request {
        kind: source.kind,
        dead_letter_topic: source.topic,
        selection,
        actor: &actor,
        force: args.force,
        rate: args.rate,
    };
    let producer = crate::kafka::operator_producer(&settings.kafka.brokers, PUBLISH_TIMEOUT)?;
    let progress = progress_bar(plan.to_replay.len(), interactive);
    let interrupted = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let summary = replay::run(pool, &producer, &request, &plan, &progress, interrupted).await;
    progress.finish_and_clear();
    summary.map(Some)
}

fn confirm(source: Source<'_>, plan: &Plan, rate: u32) -> anyhow::Result<bool> {
    let mut destinations: BTreeMap<&str, usize> = BTreeMap::new();
    for letter in &plan.to_replay {
        *destinations
            .entry(letter.destination.as_deref().unwrap_or("-"))
            .or_default() += 1;
    }
    let destinations: Vec<String> = destinations
        .iter()
        .map(|(topic, n)| format!("{n} to {topic}"))
        .collect();
    let mut stderr = std::io::stderr();
    write!(
        stderr,
        "Replay {} dead letters from {} ({}) at {rate}/s; {} skipped as replayed before. Go on? [y/N] ",
        plan.to_replay.len(),
        source.topic,
        destinations.join(", "),
        plan.skipped.len()
    )?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn progress_bar(len: usize, interactive: bool) -> ProgressBar {
    if !interactive {
        return ProgressBar::hidden();
    }
    let style =
        ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {per_sec}, {eta} left")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(len as u64).with_style(style)
}

/// The user the operating system says runs the command.
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|user| !user.is_empty())
        .or_else(|| whoami::username().ok())
        .unwrap_or_else(|| "unknown".into())
}

fn summary_line(summary: &Summary) -> String {
    let skipped = if summary.skipped > 0 {
        " (replayed before; --force replays them again)"
    } else {
        ""
    };
    format!(
        "replay {} {}: {} chosen, {} replayed, {} skipped{skipped}, in {:.1} s",
        summary.replay_id,
        summary.status.as_str(),
        summary.chosen,
        summary.replayed,
        summary.skipped,
        summary.seconds
    )
}

/// What `replay --dry-run --json` prints.
#[derive(Debug, Serialize)]
struct DryRun<'a> {
    dry_run: bool,
    chosen: usize,
    would_replay: Vec<&'a DeadLetter>,
    skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    id: RecordId,
    replayed_by: i64,
}

fn print_dry_run(source: Source<'_>, plan: &Plan, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(&DryRun {
            dry_run: true,
            chosen: plan.chosen(),
            would_replay: plan.to_replay.iter().collect(),
            skipped: plan
                .skipped
                .iter()
                .map(|(letter, replay_id)| Skipped {
                    id: letter.id,
                    replayed_by: *replay_id,
                })
                .collect(),
        });
    }
    let replayed: BTreeMap<RecordId, i64> = plan
        .skipped
        .iter()
        .map(|(letter, id)| (letter.id, *id))
        .collect();
    let mut all: Vec<DeadLetter> = plan.to_replay.clone();
    all.extend(plan.skipped.iter().map(|(letter, _)| letter.clone()));
    all.sort_by_key(|letter| letter.id);
    say(&letters_table(&all, &replayed))?;
    say(&format!(
        "dry run: would replay {} of {} chosen dead letters on {}; {} skipped as replayed before \
         (--force replays them again); nothing was changed",
        plan.to_replay.len(),
        plan.chosen(),
        source.topic,
        plan.skipped.len()
    ))
}

async fn show_audit(settings: &Settings, limit: i64, json: bool) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-12-03T12:00:00Z".parse().expect("time")
    }

    fn time(raw: &str) -> DateTime<Utc> {
        parse_time("--since", raw, now()).expect(raw)
    }

    #[test]
    fn times_are_instants_dates_or_ages() {
        assert_eq!(
            time("2026-12-03T10:00:00+09:00"),
            "2026-12-03T01:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("2026-12-01"),
            "2026-12-01T00:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("90m"),
            "2026-12-03T10:30:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        assert_eq!(
            time("2d"),
            "2026-12-01T12:00:00Z".parse::<DateTime<Utc>>().expect("t")
        );
        for bad in ["yesterday", "2026-13-01", "5w", "-3h", ""] {
            let err = parse_time("--since", bad, now()).unwrap_err();
            assert!(
                err.0.starts_with(&format!("--since '{bad}' is not a time")),
                "{err}"
            );
        }
    }

    fn args(ids: &[&str]) -> SelectionArgs {
        SelectionArgs {
            ids: ids.iter().map(|id| id.to_string()).collect(),
            tenant: None,
            reason: None,
            source_topic: None,
            since: None,
            until: None,
            all: false,
        }
    }

    #[test]
    fn ids_filters_and_all_do_not_mix() {
        let mut both = args(&["0:1"]);
        both.tenant = Some("acme".into());
        let err = both.parse(&EVENTS, now()).unwrap_err();
        assert!(err.0.contains("not two of them together"), "{err}");
        let ids = args(&["0:1", "1:7"]).parse(&EVENTS, now()).expect("ids");
        assert_eq!(ids.to_string(), "0:1 1:7");
        assert_eq!(
            args(&[]).parse(&EVENTS, now()).expect("all"),
            Selection::All
        );
    }

    #[test]
    fn an_unknown_reason_lists_the_known_ones() {
        let mut bad = args(&[]);
        bad.reason = Some("unknown_tennant".into());
        let err = bad.parse(&EVENTS, now()).unwrap_err();
        assert!(
            err.0
                .contains("use one of malformed_json, schema_violation"),
            "{err}"
        );
    }

    #[test]
    fn since_must_come_before_until() {
        let mut range = args(&[]);
        range.since = Some("1h".into());
        range.until = Some("2h".into());
        let err = range.parse(&EVENTS, now()).unwrap_err();
        assert_eq!(err.0, "--since must be before --until");
    }
}
