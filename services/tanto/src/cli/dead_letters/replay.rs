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
    let selection = checked_selection(source, &args)?;
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !args.dry_run && !args.yes && !interactive {
        return Err(Usage("replaying needs --yes when not run from a terminal".into()).into());
    }
    let pool = connect(settings).await?;
    let chosen = choose(settings, source, &selection).await?;
    if args.dry_run {
        let plan = replay::plan(&pool, source.kind, source.topic, chosen, args.force).await?;
        return print_dry_run(source, &plan, args.json);
    }

    let lock = ReplayLock::acquire(&pool, source.topic).await?;
    let run = Run {
        settings,
        pool: &pool,
        source,
        selection: &selection,
        args: &args,
        interactive,
    };
    let outcome = run.plan_confirm_and_replay(chosen).await;
    lock.release().await?;
    match outcome? {
        Some(summary) => report(&summary, args.json),
        None => say("nothing was replayed"),
    }
}

/// The selection, refusing a replay of everything that was not asked for
/// with --all.
fn checked_selection(source: Source<'_>, args: &ReplayArgs) -> Result<Selection, Usage> {
    if args.rate == 0 {
        return Err(Usage("--rate must be at least 1 record per second".into()));
    }
    let selection = args.selection.parse(source.kind, Utc::now())?;
    if selection == Selection::All && !args.selection.all {
        return Err(Usage(
            "say which dead letters to replay: ids, a filter (--tenant, --reason, \
             --since and the others `replay --help` lists) or --all"
                .into(),
        ));
    }
    Ok(selection)
}

/// The dead letters the selection chooses; none is an error.
async fn choose(
    settings: &Settings,
    source: Source<'_>,
    selection: &Selection,
) -> anyhow::Result<Vec<DeadLetter>> {
    let brokers = &settings.kafka.brokers;
    let chosen = dead_letters::read(brokers, source.topic, source.kind, selection).await?;
    if chosen.is_empty() {
        anyhow::bail!(
            "no dead letter on {} matches {selection}; `{} list` shows them",
            source.topic,
            source.kind.command()
        );
    }
    Ok(chosen)
}

/// Prints the summary; a run that did not finish is an error saying what
/// to do next.
fn report(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(summary)?;
    } else {
        say(&summary_line(summary))?;
    }
    let planned = summary.chosen - summary.skipped;
    match summary.status {
        RunStatus::Failed => anyhow::bail!(
            "replay {} failed after {} of {planned}: {}; fix the cause and run the same command \
             again",
            summary.replay_id,
            summary.replayed,
            summary.error.as_deref().unwrap_or("unknown error")
        ),
        RunStatus::Interrupted => anyhow::bail!(
            "replay {} was interrupted after {} of {planned}; run the same command again to \
             replay the rest",
            summary.replay_id,
            summary.replayed
        ),
        RunStatus::Finished | RunStatus::Running => Ok(()),
    }
}

/// A replay about to run, while the topic's lock is held.
struct Run<'a> {
    settings: &'a Settings,
    pool: &'a Pool,
    source: Source<'a>,
    selection: &'a Selection,
    args: &'a ReplayArgs,
    interactive: bool,
}

impl Run<'_> {
    /// Splits the chosen records by the audit, asks the operator, and
    /// replays; `None` when the operator declined.
    async fn plan_confirm_and_replay(
        &self,
        chosen: Vec<DeadLetter>,
    ) -> anyhow::Result<Option<Summary>> {
        let (source, args) = (self.source, self.args);
        let plan = replay::plan(self.pool, source.kind, source.topic, chosen, args.force).await?;
        if !args.yes && !plan.to_replay.is_empty() && !confirm(source, &plan, args.rate)? {
            return Ok(None);
        }
        let actor = args.actor.clone().unwrap_or_else(os_user);
        let request = Request {
            kind: source.kind,
            dead_letter_topic: source.topic,
            selection: self.selection,
            actor: &actor,
            force: args.force,
            rate: args.rate,
        };
        let brokers = &self.settings.kafka.brokers;
        let producer = crate::kafka::operator_producer(brokers, PUBLISH_TIMEOUT)?;
        let progress = progress_bar(plan.to_replay.len(), self.interactive);
        let summary = replay::run(self.pool, &producer, &request, &plan, &progress, ctrl_c()).await;
        progress.finish_and_clear();
        summary.map(Some)
    }
}

/// Completes when the operator presses Ctrl-C (SIGINT); never, if the
/// signal cannot be watched.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
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
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} replayed, {eta} left")
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
    all.sort_by_key(|letter| (letter.failed_at, letter.id));
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
