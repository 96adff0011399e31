//! Events that the notifiers could not route (`tanto.events.dlq`).
//!
//! The notifier keeps the event's key and payload as they were and writes
//! why in headers (`notifier.rs`). A replay publishes the key and payload
//! again to the topic the event was read from, so the notifier of its family
//! routes it as if it had just arrived: once the cause is fixed (the tenant
//! applied, say) it is routed, and if not it is set aside again.

use rdkafka::message::{Header, OwnedHeaders};

use super::{DeadLetter, DeadLetterKind, Outgoing, SourcePosition};
use crate::event::RejectReason;

/// The header a replayed event carries: the audit row of the replay.
pub const REPLAY_HEADER: &str = "tanto.replay.id";
/// The header a replayed event carries: the id (`partition:offset`) of the
/// dead-letter record it came from.
pub const REPLAYED_FROM_HEADER: &str = "tanto.replay.dead_letter";

#[derive(Debug, Clone, Copy, Default)]
pub struct EventDeadLetters;

impl DeadLetterKind for EventDeadLetters {
    fn name(&self) -> &'static str {
        "events"
    }

    fn command(&self) -> &'static str {
        "tanto dead-letters events"
    }

    fn reasons(&self) -> Vec<&'static str> {
        RejectReason::ALL.iter().map(|r| r.as_str()).collect()
    }

    fn describe(&self, letter: DeadLetter) -> DeadLetter {
        let text = |key: &str| letter.header(key).map(str::to_string);
        let source = text("tanto.source.topic").map(|topic| SourcePosition {
            topic,
            partition: text("tanto.source.partition").and_then(|p| p.parse().ok()),
            offset: text("tanto.source.offset").and_then(|o| o.parse().ok()),
        });
        DeadLetter {
            reason: text("tanto.reason").unwrap_or_default(),
            message: text("tanto.message").unwrap_or_default(),
            failed_at: text("tanto.rejected_at").and_then(|at| at.parse().ok()),
            destination: source.as_ref().map(|s| s.topic.clone()),
            source,
            tenant: tenant_of(&letter.payload),
            ..letter
        }
    }

    fn outgoing(&self, letter: &DeadLetter, replay_id: i64) -> Result<Outgoing, String> {
        let topic = letter.destination.clone().ok_or_else(|| {
            format!(
                "dead letter {} has no tanto.source.topic header, so its topic is unknown",
                letter.id
            )
        })?;
        let from = letter.id.to_string();
        let replay_id = replay_id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REPLAY_HEADER,
                value: Some(&replay_id),
            })
            .insert(Header {
                key: REPLAYED_FROM_HEADER,
                value: Some(&from),
            });
        Ok(Outgoing {
            topic,
            key: letter.key.clone(),
            payload: letter.payload.clone(),
            headers,
        })
    }
}

/// The `tenant_id` of a payload that is a JSON object naming one.
fn tenant_of(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("tenant_id")?.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letters::RecordId;

    fn letter(payload: &[u8], headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            id: RecordId {
                partition: 1,
                offset: 4,
            },
            reason: String::new(),
            message: String::new(),
            tenant: None,
            source: None,
            failed_at: None,
            destination: None,
            delivery: None,
            key: Some(b"O-1".to_vec()),
            payload: payload.to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_notifiers_headers_and_the_payloads_tenant_are_read() {
        let described = EventDeadLetters.describe(letter(
            br#"{"tenant_id": "acme", "event_id": "e-1"}"#,
            &[
                ("tanto.reason", "unknown_tenant"),
                ("tanto.message", "tenant 'acme' has no routing data"),
                ("tanto.source.topic", "commerce.orders"),
                ("tanto.source.partition", "2"),
                ("tanto.source.offset", "17"),
                ("tanto.rejected_at", "2026-12-03T01:15:00+00:00"),
            ],
        ));
        assert_eq!(described.reason, "unknown_tenant");
        assert_eq!(described.tenant.as_deref(), Some("acme"));
        assert_eq!(described.destination.as_deref(), Some("commerce.orders"));
        let source = described.source.expect("source");
        assert_eq!((source.partition, source.offset), (Some(2), Some(17)));
        assert_eq!(
            described.failed_at.expect("time").to_rfc3339(),
            "2026-12-03T01:15:00+00:00"
        );
    }

    #[test]
    fn a_payload_that_does_not_parse_has_no_tenant() {
        let described = EventDeadLetters.describe(letter(b"{\"tenant_id\": ", &[]));
        assert_eq!(described.tenant, None);
        assert_eq!(described.destination, None);
        let err = EventDeadLetters.outgoing(&described, 3).unwrap_err();
        assert!(err.contains("no tanto.source.topic header"), "{err}");
    }

    #[test]
    fn a_replay_sends_the_key_and_payload_as_they_were() {
        let described =
            EventDeadLetters.describe(letter(b"{}", &[("tanto.source.topic", "commerce.orders")]));
        let outgoing = EventDeadLetters.outgoing(&described, 12).expect("outgoing");
        assert_eq!(outgoing.topic, "commerce.orders");
        assert_eq!(outgoing.key.as_deref(), Some(&b"O-1"[..]));
        assert_eq!(outgoing.payload, b"{}");
        let replay = crate::kafka::header_text(&outgoing.headers, REPLAY_HEADER);
        assert_eq!(replay.as_deref(), Some("12"));
    }
}
