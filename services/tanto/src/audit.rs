//! The audit of replays (tables `replays` and `replayed_records`): who
//! replayed which dead letters, when, chosen how, and with what outcome.
//!
//! A run writes its row before it publishes anything, one row per record
//! once Kafka acknowledged its republished copy, and its counts at the end.
//! The per-record rows are also what makes a second run skip a record
//! (docs/operators.md).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use serde::Serialize;

use crate::dead_letters::{RecordId, Selection};

/// How a replay run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Finished,
    /// The operator stopped it (Ctrl-C); the records replayed so far count.
    Interrupted,
    /// Publishing or recording failed; the error says why.
    Failed,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }

    fn parse(raw: &str) -> Self {
        match raw {
            "finished" => RunStatus::Finished,
            "interrupted" => RunStatus::Interrupted,
            "failed" => RunStatus::Failed,
            _ => RunStatus::Running,
        }
    }
}

/// A run about to start.
#[derive(Debug, Clone)]
pub struct NewReplay<'a> {
    pub kind: &'a str,
    pub dead_letter_topic: &'a str,
    pub actor: &'a str,
    pub selection: &'a Selection,
    pub forced: bool,
    pub rate_per_second: u32,
    pub chosen: usize,
    pub skipped: usize,
}

/// One audit row, as `tanto dead-letters audit` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplayRecord {
    pub replay_id: i64,
    pub kind: String,
    pub dead_letter_topic: String,
    pub actor: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: RunStatus,
    pub selection: serde_json::Value,
    pub forced: bool,
    pub rate_per_second: i32,
    pub chosen: i32,
    pub replayed: i32,
    pub skipped: i32,
    pub error: Option<String>,
}

/// Writes the row of a run that starts now; returns its id.
pub async fn start(pool: &Pool, run: &NewReplay<'_>) -> anyhow::Result<i64> {
    let client = checkout(pool).await?;
    let selection =
        serde_json::to_value(run.selection).context("Failed to encode the selection")?;
    let row = client
        .query_one(
            "INSERT INTO replays (kind, dead_letter_topic, actor, status, selection, forced,
                 rate_per_second, chosen, skipped)
             VALUES ($1, $2, $3, 'running', $4, $5, $6, $7, $8)
             RETURNING replay_id",
            &[
                &run.kind,
                &run.dead_letter_topic,
                &run.actor,
                &selection,
                &run.forced,
                &i32::try_from(run.rate_per_second).unwrap_or(i32::MAX),
                &count(run.chosen),
                &count(run.skipped),
            ],
        )
        .await
        .context("Failed to write the audit record of the replay")?;
    Ok(row.get(0))
}

/// Records that the dead letter `id` was republished to `destination` by
/// run `replay_id`, and counts it.
pub async fn record_replayed(
    pool: &Pool,
    replay_id: i64,
    dead_letter_topic: &str,
    id: RecordId,
    destination: &str,
) -> anyhow::Result<()> {
    let client = checkout(pool).await?;
    client
        .execute(
            "WITH recorded AS (
                 INSERT INTO replayed_records (dead_letter_topic, dead_letter_partition,
                     dead_letter_offset, replay_id, destination_topic)
                 VALUES ($1, $2, $3, $4, $5))
             UPDATE replays SET replayed = replayed + 1 WHERE replay_id = $4",
            &[
                &dead_letter_topic,
                &id.partition,
                &id.offset,
                &replay_id,
                &destination,
            ],
        )
        .await
        .context("Failed to record a replayed dead letter in the audit")?;
    Ok(())
}

/// Closes the row of a run.
pub async fn finish(
    pool: &Pool,
    replay_id: i64,
    status: RunStatus,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let client = checkout(pool).await?;
    client
        .execute(
            "UPDATE replays SET status = $2, error = $3, finished_at = now()
             WHERE replay_id = $1",
            &[&replay_id, &status.as_str(), &error],
        )
        .await
        .context("Failed to close the audit record of the replay")?;
    Ok(())
}

/// The records among `ids` of `dead_letter_topic` that an earlier run
/// replayed, each with the latest run that did.
pub async fn replayed_before(
    pool: &Pool,
    dead_letter_topic: &str,
    ids: &[RecordId],
) -> anyhow::Result<BTreeMap<RecordId, i64>> {
    let client = checkout(pool).await?;
    let partitions: Vec<i32> = ids.iter().map(|id| id.partition).collect();
    let offsets: Vec<i64> = ids.iter().map(|id| id.offset).collect();
    let rows = client
        .query(
            "SELECT r.dead_letter_partition, r.dead_letter_offset, max(r.replay_id)
             FROM replayed_records r
             JOIN UNNEST($2::int[], $3::bigint[]) AS wanted (partition, offset_)
               ON r.dead_letter_partition = wanted.partition
              AND r.dead_letter_offset = wanted.offset_
             WHERE r.dead_letter_topic = $1
             GROUP BY 1, 2",
            &[&dead_letter_topic, &partitions, &offsets],
        )
        .await
        .context("Failed to read the replay audit")?;
    Ok(rows
        .iter()
        .map(|row| {
            let id = RecordId {
                partition: row.get(0),
                offset: row.get(1),
            };
            (id, row.get(2))
        })
        .collect())
}

/// The latest `limit` runs, newest first.
pub async fn list(pool: &Pool, limit: i64) -> anyhow::Result<Vec<ReplayRecord>> {
    let client = checkout(pool).await?;
    let rows = client
        .query(
            "SELECT replay_id, kind, dead_letter_topic, actor, started_at, finished_at, status,
                    selection, forced, rate_per_second, chosen, replayed, skipped, error
             FROM replays ORDER BY replay_id DESC LIMIT $1",
            &[&limit],
        )
        .await
        .context("Failed to read the replay audit")?;
    Ok(rows
        .iter()
        .map(|row| ReplayRecord {
            replay_id: row.get("replay_id"),
            kind: row.get("kind"),
            dead_letter_topic: row.get("dead_letter_topic"),
            actor: row.get("actor"),
            started_at: row.get("started_at"),
            finished_at: row.get("finished_at"),
            status: RunStatus::parse(row.get("status")),
            selection: row.get("selection"),
            forced: row.get("forced"),
            rate_per_second: row.get("rate_per_second"),
            chosen: row.get("chosen"),
            replayed: row.get("replayed"),
            skipped: row.get("skipped"),
            error: row.get("error"),
        })
        .collect())
}

/// Only one replay of a dead-letter topic runs at a time, so two operators
/// cannot both decide that a record was not replayed yet. The lock is a
/// Postgres session lock on a connection taken out of the pool: it is
/// released by [`ReplayLock::release`], or by the connection closing when
/// the process ends.
#[derive(Debug)]
pub struct ReplayLock {
    client: deadpool_postgres::ClientWrapper,
    key: String,
}

impl ReplayLock {
    /// Takes the lock of `dead_letter_topic`, or says that another run
    /// holds it.
    pub async fn acquire(pool: &Pool, dead_letter_topic: &str) -> anyhow::Result<Self> {
        let client = Object::take(checkout(pool).await?);
        let key = format!("tanto.replay:{dead_letter_topic}");
        let row = client
            .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
            .await
            .context("Failed to take the replay lock")?;
        if !row.get::<_, bool>(0) {
            anyhow::bail!(
                "another replay of {dead_letter_topic} is running; wait for it to end \
                 (`tanto dead-letters audit` shows it)"
            );
        }
        Ok(Self { client, key })
    }

    pub async fn release(self) -> anyhow::Result<()> {
        self.client
            .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&self.key])
            .await
            .context("Failed to release the replay lock")?;
        Ok(())
    }
}

async fn checkout(pool: &Pool) -> anyhow::Result<Object> {
    pool.get().await.context("Failed to reach the database")
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
