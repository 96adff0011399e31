//! `tanto dead-letters`: list, show and replay dead letters of each kind,
//! and read the replay audit. The commands of a kind are the same for every
//! kind ([`KindCommand`]); only the topic and the [`DeadLetterKind`] differ,
//! so the delivery dead letters plug in as one more [`Source`].

mod audit;
mod list;
mod replay;
mod selection;

use chrono::Utc;
use clap::Subcommand;

use super::Usage;
use crate::config::Settings;
use crate::dead_letters::{DeadLetterKind, DeliveryDeadLetters, EventDeadLetters, RecordId};

pub use replay::ReplayArgs;
pub use selection::SelectionArgs;

static EVENTS: EventDeadLetters = EventDeadLetters;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Deliveries the mailer gave up on (tanto.deliveries.dlq): `list`,
    /// `show` and `replay` address these.
    #[command(flatten)]
    Deliveries(KindCommand),
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
    /// Republish dead letters to be handled again: deliveries to the
    /// delivery topic, events to the topic they came from. A dead letter
    /// replayed before is skipped unless --force.
    Replay(ReplayArgs),
}

/// A kind of dead letter and the topic that holds it.
#[derive(Debug, Clone, Copy)]
struct Source<'a> {
    kind: &'a dyn DeadLetterKind,
    topic: &'a str,
}

pub(super) async fn run(settings: &Settings, command: DeadLettersCommand) -> anyhow::Result<()> {
    match command {
        DeadLettersCommand::Deliveries(command) => {
            let deliveries = DeliveryDeadLetters {
                deliveries_topic: settings.kafka.topics.deliveries.clone(),
            };
            let source = Source {
                kind: &deliveries,
                topic: &settings.kafka.topics.deliveries_dlq,
            };
            run_kind(settings, source, command).await
        }
        DeadLettersCommand::Events { command } => {
            let source = Source {
                kind: &EVENTS,
                topic: &settings.kafka.topics.events_dlq,
            };
            run_kind(settings, source, command).await
        }
        DeadLettersCommand::Audit { limit, json } => audit::show_audit(settings, limit, json).await,
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
            list::list(settings, source, &selection, json).await
        }
        KindCommand::Show { id, json } => {
            let id: RecordId = id.parse().map_err(Usage)?;
            list::show(settings, source, id, json).await
        }
        KindCommand::Replay(args) => replay::replay_command(settings, source, args).await,
    }
}
