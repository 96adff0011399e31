//! `replay`: choose, confirm, republish at a steady pace, summarise.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use chrono::Utc;
use clap::Args;
use deadpool_postgres::Pool;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::Source;
use super::list::letters_table;
use super::selection::SelectionArgs;
use crate::audit::{ReplayLock, RunStatus};
use crate::cli::{Usage, connect, print_json, say};
use crate::config::Settings;
use crate::dead_letters::{self, DeadLetter, RecordId, Selection};
use crate::replay::{self, DEFAULT_RATE, PUBLISH_TIMEOUT, Plan, Request, Summary};

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

pub(super) async fn replay_command(
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
