//! Dead-letter records as operators see them: reading a dead-letter topic,
//! naming a record (`partition:offset`), and choosing records by filter or
//! by id.
//!
//! Each kind of dead letter (events, deliveries) implements
//! [`DeadLetterKind`]: how its headers read and what a
//! replay publishes. Listing, choosing, replaying ([`crate::replay`]) and the
//! audit ([`crate::audit`]) are shared by every kind.

pub mod deliveries;
pub mod events;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::{Headers, OwnedHeaders, OwnedMessage};
use serde::{Deserialize, Serialize};

pub use deliveries::{DeliveryDeadLetters, DeliveryFacts};
pub use events::EventDeadLetters;

/// How long reading a dead-letter topic may take before the command gives up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A record's place on its dead-letter topic, written `partition:offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId {
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.partition, self.offset)
    }
}

impl FromStr for RecordId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed =
            || format!("'{s}' is not a dead-letter id; write it PARTITION:OFFSET, e.g. 0:42");
        let (partition, offset) = s.split_once(':').ok_or_else(malformed)?;
        let partition: i32 = partition.parse().map_err(|_| malformed())?;
        let offset: i64 = offset.parse().map_err(|_| malformed())?;
        if partition < 0 || offset < 0 {
            return Err(malformed());
        }
        Ok(Self { partition, offset })
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// Where the record that was set aside had been read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourcePosition {
    pub topic: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// One dead-letter record, whatever its kind: the original key and payload
/// with what tanto's headers say about them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub id: RecordId,
    /// Why it was set aside, e.g. `unknown_tenant`.
    pub reason: String,
    /// The sentence the service wrote about it.
    pub message: String,
    /// The tenant named in the payload, when the payload says.
    pub tenant: Option<String>,
    pub source: Option<SourcePosition>,
    /// When the service set it aside.
    pub failed_at: Option<DateTime<Utc>>,
    /// The topic a replay publishes it to; `None` when the record does not
    /// say, and then it cannot be replayed.
    pub destination: Option<String>,
    /// What a dead-lettered delivery says about itself; `None` for events.
    #[serde(skip_serializing_if = "Option::is_none", flatten)]
    pub delivery: Option<DeliveryFacts>,
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    #[serde(skip)]
    pub payload: Vec<u8>,
    /// Every header, as text, as it is on the record.
    #[serde(skip)]
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    /// The id, key, payload and headers of a Kafka record; the kind fills in
    /// the rest.
    fn raw(message: &OwnedMessage) -> Self {
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            id: RecordId {
                partition: message.partition(),
                offset: message.offset(),
            },
            reason: String::new(),
            message: String::new(),
            tenant: None,
            source: None,
            failed_at: None,
            destination: None,
            delivery: None,
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        }
    }

    /// The value of a header, if the record has it.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A message a replay publishes.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: OwnedHeaders,
}

/// What differs between the kinds of dead letters.
pub trait DeadLetterKind: fmt::Debug + Send + Sync {
    /// The name used in commands, the audit and messages, e.g. `events`.
    fn name(&self) -> &'static str;

    /// The CLI command that lists, shows and replays this kind, for
    /// messages, e.g. `tanto dead-letters events`.
    fn command(&self) -> &'static str;

    /// The reasons this kind's records can carry, for checking `--reason`.
    fn reasons(&self) -> Vec<&'static str>;

    /// Reads tanto's headers and, where useful, the payload.
    fn describe(&self, letter: DeadLetter) -> DeadLetter;

    /// The message a replay publishes for `letter`, or why it cannot be
    /// replayed. `replay_id` is the audit row of the run.
    fn outgoing(&self, letter: &DeadLetter, replay_id: i64) -> Result<Outgoing, String>;

    /// Whether records of this kind are deliveries, which the mail, class,
    /// address and attempts filters look at.
    fn holds_deliveries(&self) -> bool {
        false
    }
}

/// The records an operator names: all of them, those matching a filter, or
/// those with the given ids. Stored in the audit as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    All,
    Filter(Filter),
    Ids(BTreeSet<RecordId>),
}

/// Every field given must match; a record without the value a field looks
/// at (a payload that does not name its tenant, a missing time) does not
/// match that field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_topic: Option<String>,
    /// Set aside at or after this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Set aside before this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// Deliveries of this mail number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Deliveries to a recipient reached through this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Deliveries to this address (compared trimmed and lower-cased).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Deliveries attempted at least this many times.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_attempts: Option<i32>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let source_topic = letter.source.as_ref().map(|s| s.topic.as_str());
        equal_if_given(&self.tenant, letter.tenant.as_deref())
            && equal_if_given(&self.reason, Some(letter.reason.as_str()))
            && equal_if_given(&self.source_topic, source_topic)
            && self
                .since
                .is_none_or(|since| letter.failed_at.is_some_and(|at| at >= since))
            && self
                .until
                .is_none_or(|until| letter.failed_at.is_some_and(|at| at < until))
            && self.matches_delivery(letter.delivery.as_ref())
    }

    fn matches_delivery(&self, delivery: Option<&DeliveryFacts>) -> bool {
        let asks = self.mail.is_some()
            || self.class.is_some()
            || self.address.is_some()
            || self.min_attempts.is_some();
        let Some(delivery) = delivery else {
            return !asks;
        };
        let address = self
            .address
            .as_deref()
            .map(crate::delivery::normalize_address);
        equal_if_given(&self.mail, Some(delivery.mail.as_str()))
            && self
                .class
                .as_ref()
                .is_none_or(|class| delivery.classes.contains(class))
            && address.is_none_or(|address| {
                crate::delivery::normalize_address(&delivery.address) == address
            })
            && self
                .min_attempts
                .is_none_or(|least| delivery.attempts >= least)
    }
}

fn equal_if_given(wanted: &Option<String>, actual: Option<&str>) -> bool {
    wanted
        .as_deref()
        .is_none_or(|wanted| actual == Some(wanted))
}

impl Selection {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Selection::All => true,
            Selection::Filter(filter) => filter.matches(letter),
            Selection::Ids(ids) => ids.contains(&letter.id),
        }
    }
}

impl fmt::Display for Selection {
    /// The selection as the operator wrote it, for messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::All => f.write_str("--all"),
            Selection::Ids(ids) => {
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                f.write_str(&ids.join(" "))
            }
            Selection::Filter(filter) => {
                let mut parts = Vec::new();
                let mut add = |flag: &str, value: Option<String>| {
                    if let Some(value) = value {
                        parts.push(format!("{flag} {value}"));
                    }
                };
                add("--tenant", filter.tenant.clone());
                add("--reason", filter.reason.clone());
                add("--source-topic", filter.source_topic.clone());
                add("--since", filter.since.map(|t| t.to_rfc3339()));
                add("--until", filter.until.map(|t| t.to_rfc3339()));
                add("--mail", filter.mail.clone());
                add("--class", filter.class.clone());
                add("--address", filter.address.clone());
                add("--min-attempts", filter.min_attempts.map(|n| n.to_string()));
                f.write_str(&parts.join(" "))
            }
        }
    }
}

/// The records of `topic` that `selection` chooses, in the order they were
/// set aside (then by id), which is the order a replay republishes them in.
/// An id that names no record is an error, so a typo never shrinks a replay
/// silently.
pub async fn read(
    brokers: &str,
    topic: &str,
    kind: &dyn DeadLetterKind,
    selection: &Selection,
) -> anyhow::Result<Vec<DeadLetter>> {
    let (brokers, topic_name) = (brokers.to_string(), topic.to_string());
    let reading = tokio::task::spawn_blocking(move || {
        let mut raw = Vec::new();
        crate::kafka::read_to_end(&brokers, &topic_name, READ_TIMEOUT, |message| {
            raw.push(DeadLetter::raw(&message));
        })?;
        Ok::<_, anyhow::Error>(raw)
    });
    let mut chosen: Vec<DeadLetter> = reading
        .await??
        .into_iter()
        .map(|letter| kind.describe(letter))
        .filter(|letter| selection.matches(letter))
        .collect();
    chosen.sort_by_key(|letter| (letter.failed_at, letter.id));
    if let Selection::Ids(ids) = selection {
        let found: BTreeSet<RecordId> = chosen.iter().map(|letter| letter.id).collect();
        let missing: Vec<String> = ids.difference(&found).map(ToString::to_string).collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "no dead letter on {topic} has the id {}; `{} list` shows the ids",
                missing.join(", "),
                kind.command()
            );
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(tenant: Option<&str>, reason: &str, at: &str) -> DeadLetter {
        DeadLetter {
            id: RecordId {
                partition: 0,
                offset: 1,
            },
            reason: reason.into(),
            message: String::new(),
            tenant: tenant.map(Into::into),
            source: Some(SourcePosition {
                topic: "commerce.orders".into(),
                partition: Some(0),
                offset: Some(7),
            }),
            failed_at: Some(at.parse().expect("time")),
            destination: Some("commerce.orders".into()),
            delivery: None,
            key: None,
            payload: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn ids_read_as_partition_colon_offset() {
        assert_eq!(
            "2:40".parse::<RecordId>(),
            Ok(RecordId {
                partition: 2,
                offset: 40
            })
        );
        for bad in ["2", "a:1", "1:", "-1:3", "1:2:3"] {
            let err = bad.parse::<RecordId>().unwrap_err();
            assert!(err.contains("PARTITION:OFFSET"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_filter_matches_only_when_every_given_field_does() {
        let acme = letter(Some("acme"), "unknown_tenant", "2026-12-03T10:00:00Z");
        let since = |t: &str| Filter {
            since: Some(t.parse().expect("time")),
            ..Filter::default()
        };
        assert!(Filter::default().matches(&acme));
        assert!(
            since("2026-12-03T10:00:00Z").matches(&acme),
            "since is inclusive"
        );
        assert!(!since("2026-12-03T10:00:01Z").matches(&acme));
        let until = Filter {
            until: Some("2026-12-03T10:00:00Z".parse().expect("time")),
            ..Filter::default()
        };
        assert!(!until.matches(&acme), "until is exclusive");
        let both = Filter {
            tenant: Some("acme".into()),
            reason: Some("schema_violation".into()),
            ..Filter::default()
        };
        assert!(!both.matches(&acme));
        let tenant = Filter {
            tenant: Some("acme".into()),
            ..Filter::default()
        };
        assert!(!tenant.matches(&letter(None, "malformed_json", "2026-12-03T10:00:00Z")));
    }

    #[test]
    fn a_selection_prints_as_the_operator_wrote_it() {
        let filter = Selection::Filter(Filter {
            tenant: Some("acme".into()),
            reason: Some("unknown_tenant".into()),
            ..Filter::default()
        });
        assert_eq!(filter.to_string(), "--tenant acme --reason unknown_tenant");
        let ids = Selection::Ids(["1:5".parse().expect("id"), "0:9".parse().expect("id")].into());
        assert_eq!(ids.to_string(), "0:9 1:5");
    }
}
