//! Deliveries the mailer gave up on (`tanto.deliveries.dlq`).
//!
//! The mailer keeps the delivery message byte for byte, keyed by its
//! delivery id, and writes why in headers (`retry.rs`, docs/mailer.md). A
//! replay publishes the message again to the delivery topic, under the same
//! key, with `replay_count` raised by one and the record's headers kept. The
//! ledger sends a `dead` or `unknown` delivery again only for a higher
//! replay count and never sends a `sent` one again (`ledger::decide`), so a
//! replayed record is sent at most once however often it is read. If its
//! cause is still there it goes through the retry tiers and back to the
//! dead-letter topic as a new record; nothing replays it by itself.

use rdkafka::message::{Header, OwnedHeaders};
use serde::Serialize;
use serde_json::Value;

use super::{DeadLetter, DeadLetterKind, Outgoing, SourcePosition};
use crate::dead_letters::events::{REPLAY_HEADER, REPLAYED_FROM_HEADER};
use crate::retry;

/// What a dead-lettered delivery's payload and headers say about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryFacts {
    pub delivery_id: String,
    /// The mail number, e.g. `5-1-2`.
    pub mail: String,
    pub address: String,
    /// The classes through which the recipient was reached.
    pub classes: Vec<String>,
    /// Attempts made, all failed (`tanto.attempts`).
    pub attempts: i32,
    pub replay_count: u64,
    /// The last SMTP reply, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
}

/// Delivery dead letters, replayed to `deliveries_topic`.
#[derive(Debug, Clone)]
pub struct DeliveryDeadLetters {
    pub deliveries_topic: String,
}

impl DeadLetterKind for DeliveryDeadLetters {
    fn name(&self) -> &'static str {
        "deliveries"
    }

    fn command(&self) -> &'static str {
        "tanto dead-letters"
    }

    fn reasons(&self) -> Vec<&'static str> {
        retry::ERROR_CLASSES.to_vec()
    }

    fn describe(&self, letter: DeadLetter) -> DeadLetter {
        let text = |key: &str| letter.header(key).map(str::to_string);
        let source = text("tanto.source.topic").map(|topic| SourcePosition {
            topic,
            partition: text("tanto.source.partition").and_then(|p| p.parse().ok()),
            offset: text("tanto.source.offset").and_then(|o| o.parse().ok()),
        });
        let payload: Option<Value> = serde_json::from_slice(&letter.payload).ok();
        let field = |pointer: &str| {
            payload
                .as_ref()
                .and_then(|p| p.pointer(pointer))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let delivery = field("/delivery_id").map(|delivery_id| DeliveryFacts {
            delivery_id,
            mail: field("/mail/number").unwrap_or_default(),
            address: field("/recipient/address").unwrap_or_default(),
            classes: classes_of(payload.as_ref()),
            attempts: text(retry::ATTEMPTS)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            replay_count: replay_count_of(payload.as_ref()),
            smtp_reply: text(retry::SMTP_REPLY),
        });
        DeadLetter {
            reason: text(retry::ERROR_CLASS).unwrap_or_default(),
            message: text(retry::ERROR).unwrap_or_default(),
            failed_at: text(retry::LAST_FAILED_AT).and_then(|at| at.parse().ok()),
            destination: Some(self.deliveries_topic.clone()),
            tenant: field("/tenant_id"),
            source,
            delivery,
            ..letter
        }
    }

    fn outgoing(&self, letter: &DeadLetter, replay_id: i64) -> Result<Outgoing, String> {
        let not_a_delivery = || {
            format!(
                "dead letter {} is not a delivery message (malformed_delivery), so there is \
                 nothing to send",
                letter.id
            )
        };
        let mut payload: Value =
            serde_json::from_slice(&letter.payload).map_err(|_| not_a_delivery())?;
        let replay_count = replay_count_of(Some(&payload)) + 1;
        let object = payload.as_object_mut().ok_or_else(not_a_delivery)?;
        let delivery_id = letter.delivery.as_ref().ok_or_else(not_a_delivery)?;
        object.insert("replay_count".into(), replay_count.into());
        Ok(Outgoing {
            topic: self.deliveries_topic.clone(),
            key: Some(delivery_id.delivery_id.clone().into_bytes()),
            payload: serde_json::to_vec(&payload).map_err(|err| err.to_string())?,
            headers: replay_headers(letter, replay_id),
        })
    }

    fn holds_deliveries(&self) -> bool {
        true
    }
}

/// The record's own headers (the retry state: attempts, failure times, the
/// last error) with the two replay headers in place of any earlier ones.
fn replay_headers(letter: &DeadLetter, replay_id: i64) -> OwnedHeaders {
    let replayed = [REPLAY_HEADER, REPLAYED_FROM_HEADER];
    let kept = letter
        .headers
        .iter()
        .filter(|(key, _)| !replayed.contains(&key.as_str()));
    let mut headers = OwnedHeaders::new();
    for (key, value) in kept {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let (replay_id, from) = (replay_id.to_string(), letter.id.to_string());
    headers
        .insert(Header {
            key: REPLAY_HEADER,
            value: Some(&replay_id),
        })
        .insert(Header {
            key: REPLAYED_FROM_HEADER,
            value: Some(&from),
        })
}

fn classes_of(payload: Option<&Value>) -> Vec<String> {
    let classes = payload
        .and_then(|p| p.pointer("/recipient/classes"))
        .and_then(Value::as_array);
    classes
        .into_iter()
        .flatten()
        .filter_map(|class| class.as_str().map(str::to_string))
        .collect()
}

fn replay_count_of(payload: Option<&Value>) -> u64 {
    payload
        .and_then(|p| p.get("replay_count"))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letters::{Filter, RecordId};
    use crate::kafka::header_text;

    const PAYLOAD: &str = r#"{"delivery_id": "0b6c", "tenant_id": "acme",
        "mail": {"number": "5-1-2", "name": "x"}, "replay_count": 1, "extra": [1],
        "recipient": {"address": "Tanaka@acme.example", "name": "",
                      "classes": ["company_wide", "product_staff"]}}"#;

    fn kind() -> DeliveryDeadLetters {
        DeliveryDeadLetters {
            deliveries_topic: "t.deliveries".into(),
        }
    }

    fn letter(payload: &str) -> DeadLetter {
        kind().describe(DeadLetter {
            id: RecordId {
                partition: 0,
                offset: 9,
            },
            reason: String::new(),
            message: String::new(),
            tenant: None,
            source: None,
            failed_at: None,
            destination: None,
            delivery: None,
            key: Some(b"0b6c".to_vec()),
            payload: payload.as_bytes().to_vec(),
            headers: [
                ("tanto.attempts", "4"),
                ("tanto.error_class", "smtp_4xx"),
                ("tanto.error", "451 try later"),
                ("tanto.last_failed_at", "2026-12-03T01:15:00.000Z"),
                ("tanto.source.topic", "t.deliveries.retry.3"),
                (REPLAY_HEADER, "3"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        })
    }

    #[test]
    fn the_mailers_headers_and_the_payload_are_read() {
        let letter = letter(PAYLOAD);
        assert_eq!(letter.reason, "smtp_4xx");
        assert_eq!(letter.tenant.as_deref(), Some("acme"));
        assert_eq!(letter.destination.as_deref(), Some("t.deliveries"));
        assert!(letter.failed_at.is_some());
        let facts = letter.delivery.expect("facts");
        assert_eq!((facts.mail.as_str(), facts.attempts), ("5-1-2", 4));
        assert_eq!(facts.classes, ["company_wide", "product_staff"]);
    }

    #[test]
    fn a_replay_raises_the_replay_count_and_keeps_the_rest() {
        let outgoing = kind().outgoing(&letter(PAYLOAD), 12).expect("outgoing");
        assert_eq!(outgoing.topic, "t.deliveries");
        assert_eq!(outgoing.key.as_deref(), Some(&b"0b6c"[..]));
        let payload: Value = serde_json::from_slice(&outgoing.payload).expect("json");
        assert_eq!(payload["replay_count"], 2);
        assert_eq!(payload["extra"], serde_json::json!([1]));
        let header = |key| header_text(&outgoing.headers, key);
        assert_eq!(header(REPLAY_HEADER).as_deref(), Some("12"));
        assert_eq!(header("tanto.attempts").as_deref(), Some("4"));
    }

    #[test]
    fn a_record_that_is_not_a_delivery_cannot_be_replayed() {
        let err = kind().outgoing(&letter("not json"), 1).unwrap_err();
        assert!(err.contains("malformed_delivery"), "{err}");
    }

    #[test]
    fn delivery_filters_read_the_payload_and_headers() {
        let letter = letter(PAYLOAD);
        let filter = |f: Filter| f.matches(&letter);
        assert!(filter(Filter {
            address: Some(" tanaka@ACME.example".into()),
            class: Some("product_staff".into()),
            mail: Some("5-1-2".into()),
            min_attempts: Some(4),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            class: Some("customer_admin".into()),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            min_attempts: Some(5),
            ..Filter::default()
        }));
        assert!(!filter(Filter {
            mail: Some("5-1-1".into()),
            ..Filter::default()
        }));
    }
}
