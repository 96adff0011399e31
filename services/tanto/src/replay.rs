//! Replaying dead letters: the machinery every kind shares.
//!
//! A replay republishes each chosen record (by [`DeadLetterKind::outgoing`])
//! and waits for Kafka's acknowledgement before it records the record in the
//! audit, one after the other at a steady pace. A record the audit says was
//! replayed before is skipped unless the operator forces it, so running the
//! same command twice replays nothing the second time.
//!
//! Guarantee: at least once. A crash between the acknowledgement and the
//! audit row leaves a record that the next run replays again; the services
//! downstream drop such a repeat (deterministic delivery ids and the
//! mailer's ledger). Only one run per dead-letter topic at a time
//! ([`audit::ReplayLock`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use indicatif::ProgressBar;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::audit::{self, NewReplay, RunStatus};
use crate::dead_letters::{DeadLetter, DeadLetterKind, Selection};

/// Records per second when the operator does not say: fast enough to clear a
/// few thousand records in a minute or two, slow enough that the notifiers'
/// live traffic keeps its pace while a replay runs.
pub const DEFAULT_RATE: u32 = 50;

/// How long a republished record may wait for Kafka's acknowledgement.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// The chosen records split into those a run would replay and those the
/// audit says were replayed before.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub to_replay: Vec<DeadLetter>,
    /// Each with the latest run that replayed it.
    pub skipped: Vec<(DeadLetter, i64)>,
}

impl Plan {
    pub fn chosen(&self) -> usize {
        self.to_replay.len() + self.skipped.len()
    }
}

/// Splits `chosen` by the audit (with `force`, nothing is skipped), and
/// checks that every record to replay can be: a run never stops halfway on
/// a record it could have refused at the start.
pub async fn plan(
    pool: &Pool,
    kind: &dyn DeadLetterKind,
    dead_letter_topic: &str,
    chosen: Vec<DeadLetter>,
    force: bool,
) -> anyhow::Result<Plan> {
    let ids: Vec<_> = chosen.iter().map(|letter| letter.id).collect();
    let before = audit::replayed_before(pool, dead_letter_topic, &ids).await?;
    let mut plan = Plan {
        to_replay: Vec::new(),
        skipped: Vec::new(),
    };
    for letter in chosen {
        match before.get(&letter.id) {
            Some(&replay_id) if !force => plan.skipped.push((letter, replay_id)),
            _ => plan.to_replay.push(letter),
        }
    }
    for letter in &plan.to_replay {
        kind.outgoing(letter, 0).map_err(|reason| {
            anyhow::anyhow!("{reason}; leave it out of the selection to replay the others")
        })?;
    }
    Ok(plan)
}

/// What the operator asked for, besides the records.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub kind: &'a dyn DeadLetterKind,
    pub dead_letter_topic: &'a str,
    pub selection: &'a Selection,
    pub actor: &'a str,
    pub force: bool,
    /// Records per second, at least 1.
    pub rate: u32,
}

/// How a run ended, for the operator's summary and the `--json` form.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub replay_id: i64,
    pub status: RunStatus,
    pub chosen: usize,
    pub replayed: usize,
    pub skipped: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Runs a replay: writes its audit row, republishes `plan.to_replay` at
/// `request.rate` until done or `interrupted` completes, and closes the
/// row. The caller holds the topic's [`audit::ReplayLock`]. A failure to
/// publish stops the run; it is recorded and returned in the summary.
pub async fn run(
    pool: &Pool,
    producer: &FutureProducer,
    request: &Request<'_>,
    plan: &Plan,
    progress: &ProgressBar,
    interrupted: impl Future<Output = ()>,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let new = NewReplay {
        kind: request.kind.name(),
        dead_letter_topic: request.dead_letter_topic,
        actor: request.actor,
        selection: request.selection,
        forced: request.force,
        rate_per_second: request.rate,
        chosen: plan.chosen(),
        skipped: plan.skipped.len(),
    };
    let replay_id = audit::start(pool, &new).await?;
    let outcome = publish_all(
        pool,
        producer,
        request,
        plan,
        replay_id,
        progress,
        interrupted,
    )
    .await;
    let (status, replayed, error) = match outcome {
        Ok((status, replayed)) => (status, replayed, None),
        Err((replayed, err)) => (RunStatus::Failed, replayed, Some(format!("{err:#}"))),
    };
    audit::finish(pool, replay_id, status, error.as_deref()).await?;
    Ok(Summary {
        replay_id,
        status,
        chosen: plan.chosen(),
        replayed,
        skipped: plan.skipped.len(),
        seconds: started.elapsed().as_secs_f64(),
        error,
    })
}

/// Publishes one record per tick; returns how the loop ended and how many
/// records were replayed, or the error with that count.
async fn publish_all(
    pool: &Pool,
    producer: &FutureProducer,
    request: &Request<'_>,
    plan: &Plan,
    replay_id: i64,
    progress: &ProgressBar,
    interrupted: impl Future<Output = ()>,
) -> Result<(RunStatus, usize), (usize, anyhow::Error)> {
    let mut pace = tokio::time::interval(Duration::from_secs(1) / request.rate.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interrupted = std::pin::pin!(interrupted);
    let mut replayed = 0;
    for letter in &plan.to_replay {
        tokio::select! {
            _ = pace.tick() => {}
            () = &mut interrupted => return Ok((RunStatus::Interrupted, replayed)),
        }
        replay_one(pool, producer, request, letter, replay_id)
            .await
            .map_err(|err| (replayed, err))?;
        replayed += 1;
        progress.inc(1);
    }
    Ok((RunStatus::Finished, replayed))
}

async fn replay_one(
    pool: &Pool,
    producer: &FutureProducer,
    request: &Request<'_>,
    letter: &DeadLetter,
    replay_id: i64,
) -> anyhow::Result<()> {
    let outgoing = request
        .kind
        .outgoing(letter, replay_id)
        .map_err(anyhow::Error::msg)?;
    let mut record = FutureRecord::to(&outgoing.topic)
        .payload(&outgoing.payload)
        .headers(outgoing.headers.clone());
    if let Some(key) = &outgoing.key {
        record = record.key(key);
    }
    producer
        .send(record, PUBLISH_TIMEOUT)
        .await
        .map_err(|(err, _)| err)
        .with_context(|| {
            format!(
                "Failed to publish dead letter {} to {}",
                letter.id, outgoing.topic
            )
        })?;
    audit::record_replayed(
        pool,
        replay_id,
        request.dead_letter_topic,
        letter.id,
        &outgoing.topic,
    )
    .await
}
