//! The transaction event contract (v1) and the checks an event passes before
//! it is routed.
//!
//! Parsing never panics and never loses the reason: every way an event can be
//! refused is a [`RejectReason`], which the notifier writes on the dead-letter
//! record so an operator sees why without reading the payload.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// The JSON Schema every event is validated against, shipped in `schemas/`.
pub const EVENT_SCHEMA: &str = include_str!("../../../schemas/event.schema.json");

static EVENT_VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: serde_json::Value =
        serde_json::from_str(EVENT_SCHEMA).expect("schemas/event.schema.json is valid JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schemas/event.schema.json is a valid JSON Schema")
});

/// The three event families, one Kafka topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Order,
    Contract,
    Quote,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Order, Family::Contract, Family::Quote];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Order => "order",
            Family::Contract => "contract",
            Family::Quote => "quote",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every event type tanto accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    OrderApplied,
    OrderAccepted,
    OrderConfirmed,
    OrderCancelled,
    ContractCreated,
    ContractConfirmed,
    ContractCancelled,
    QuoteRequested,
    QuoteIssued,
    QuoteAccepted,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::OrderApplied,
        EventType::OrderAccepted,
        EventType::OrderConfirmed,
        EventType::OrderCancelled,
        EventType::ContractCreated,
        EventType::ContractConfirmed,
        EventType::ContractCancelled,
        EventType::QuoteRequested,
        EventType::QuoteIssued,
        EventType::QuoteAccepted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::OrderApplied => "order.applied",
            EventType::OrderAccepted => "order.accepted",
            EventType::OrderConfirmed => "order.confirmed",
            EventType::OrderCancelled => "order.cancelled",
            EventType::ContractCreated => "contract.created",
            EventType::ContractConfirmed => "contract.confirmed",
            EventType::ContractCancelled => "contract.cancelled",
            EventType::QuoteRequested => "quote.requested",
            EventType::QuoteIssued => "quote.issued",
            EventType::QuoteAccepted => "quote.accepted",
        }
    }

    pub fn family(self) -> Family {
        match self {
            EventType::OrderApplied
            | EventType::OrderAccepted
            | EventType::OrderConfirmed
            | EventType::OrderCancelled => Family::Order,
            EventType::ContractCreated
            | EventType::ContractConfirmed
            | EventType::ContractCancelled => Family::Contract,
            EventType::QuoteRequested | EventType::QuoteIssued | EventType::QuoteAccepted => {
                Family::Quote
            }
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|event_type| event_type.as_str() == s)
            .ok_or_else(|| format!("unknown event type '{s}'"))
    }
}

impl Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A transaction event that passed every check.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub event_type: EventType,
    pub occurred_at: DateTime<FixedOffset>,
    pub tenant_id: String,
    pub customer_id: String,
    pub transaction: Transaction,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub number: String,
    pub items: Vec<Item>,
    pub total_amount: Option<String>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Item {
    pub product_id: String,
    pub product_name: Option<String>,
    pub quantity: Option<u64>,
    pub unit_price: Option<String>,
}

impl Event {
    /// The distinct product ids on the transaction, in order of appearance.
    pub fn product_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::with_capacity(self.transaction.items.len());
        for item in &self.transaction.items {
            if !ids.contains(&item.product_id) {
                ids.push(item.product_id.clone());
            }
        }
        ids
    }
}

/// Why an event cannot be routed. The names are stable: they appear in
/// dead-letter headers and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    MalformedJson,
    SchemaViolation,
    UnknownEventType,
    WrongTopic,
    UnknownTenant,
}

impl RejectReason {
    pub const ALL: [RejectReason; 5] = [
        RejectReason::MalformedJson,
        RejectReason::SchemaViolation,
        RejectReason::UnknownEventType,
        RejectReason::WrongTopic,
        RejectReason::UnknownTenant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedJson => "malformed_json",
            RejectReason::SchemaViolation => "schema_violation",
            RejectReason::UnknownEventType => "unknown_event_type",
            RejectReason::WrongTopic => "wrong_topic",
            RejectReason::UnknownTenant => "unknown_tenant",
        }
    }
}

/// An event refused with its reason and a message an operator can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", reason.as_str())]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Parses and checks one Kafka payload taken from the topic of `family`.
pub fn parse(payload: &[u8], family: Family) -> Result<Event, Rejection> {
    let value: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|err| Rejection::new(RejectReason::MalformedJson, err.to_string()))?;
    check_schema(&value)?;
    let event_type = check_event_type(&value, family)?;
    let event: Event = serde_json::from_value(value)
        .map_err(|err| Rejection::new(RejectReason::SchemaViolation, err.to_string()))?;
    debug_assert_eq!(event.event_type, event_type);
    Ok(event)
}

fn check_schema(value: &serde_json::Value) -> Result<(), Rejection> {
    let problems: Vec<String> = EVENT_VALIDATOR
        .iter_errors(value)
        .take(5)
        .map(|error| format!("at '{}': {error}", error.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectReason::SchemaViolation,
            problems.join("; "),
        ))
    }
}

fn check_event_type(value: &serde_json::Value, family: Family) -> Result<EventType, Rejection> {
    let raw = value["event_type"].as_str().unwrap_or_default();
    let event_type: EventType = raw
        .parse()
        .map_err(|err: String| Rejection::new(RejectReason::UnknownEventType, err))?;
    if event_type.family() != family {
        return Err(Rejection::new(
            RejectReason::WrongTopic,
            format!(
                "{event_type} belongs to the {} family but was read from the {family} topic",
                event_type.family()
            ),
        ));
    }
    Ok(event_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "event_id": "e-1",
            "event_type": "order.applied",
            "occurred_at": "2026-12-03T10:15:00+09:00",
            "tenant_id": "acme",
            "customer_id": "C-1001",
            "transaction": {
                "id": "O-1", "number": "ORD-000123",
                "items": [{ "product_id": "P-100", "quantity": 2, "unit_price": "12000" }],
                "total_amount": "24000", "currency": "JPY",
                "channel": "web"
            },
            "producer_version": 7
        })
    }

    fn parse_value(value: &serde_json::Value, family: Family) -> Result<Event, Rejection> {
        parse(value.to_string().as_bytes(), family)
    }

    #[test]
    fn a_valid_event_parses_and_extra_fields_are_ignored() {
        let event = parse_value(&sample(), Family::Order).expect("valid");
        assert_eq!(event.event_type, EventType::OrderApplied);
        assert_eq!(event.transaction.items[0].quantity, Some(2));
        assert_eq!(event.product_ids(), vec!["P-100".to_string()]);
    }

    #[test]
    fn malformed_json_is_its_own_reason() {
        let err = parse(b"{\"event_id\": ", Family::Order).unwrap_err();
        assert_eq!(err.reason, RejectReason::MalformedJson);
    }

    #[test]
    fn each_missing_required_field_is_a_schema_violation() {
        for pointer in [
            "/event_id",
            "/tenant_id",
            "/customer_id",
            "/transaction/number",
        ] {
            let mut value = sample();
            let (parent, key) = pointer.rsplit_once('/').expect("pointer");
            value
                .pointer_mut(parent)
                .and_then(|v| v.as_object_mut())
                .expect("parent")
                .remove(key);
            let err = parse_value(&value, Family::Order).unwrap_err();
            assert_eq!(
                err.reason,
                RejectReason::SchemaViolation,
                "{pointer}: {err}"
            );
            assert!(err.message.contains(key), "{pointer}: {err}");
        }
    }

    #[test]
    fn an_event_needs_an_item_with_a_product() {
        let mut value = sample();
        value["transaction"]["items"] = json!([]);
        assert_eq!(
            parse_value(&value, Family::Order).unwrap_err().reason,
            RejectReason::SchemaViolation
        );
        value["transaction"]["items"] = json!([{ "quantity": 1 }]);
        assert_eq!(
            parse_value(&value, Family::Order).unwrap_err().reason,
            RejectReason::SchemaViolation
        );
    }

    #[test]
    fn amounts_are_decimal_strings_and_times_are_dates() {
        let mut value = sample();
        value["transaction"]["total_amount"] = json!(24000.5);
        assert_eq!(
            parse_value(&value, Family::Order).unwrap_err().reason,
            RejectReason::SchemaViolation
        );
        let mut value = sample();
        value["occurred_at"] = json!("yesterday");
        assert_eq!(
            parse_value(&value, Family::Order).unwrap_err().reason,
            RejectReason::SchemaViolation
        );
    }

    #[test]
    fn unknown_types_and_wrong_topics_are_told_apart() {
        let mut value = sample();
        value["event_type"] = json!("order.teleported");
        assert_eq!(
            parse_value(&value, Family::Order).unwrap_err().reason,
            RejectReason::UnknownEventType
        );
        let err = parse_value(&sample(), Family::Quote).unwrap_err();
        assert_eq!(err.reason, RejectReason::WrongTopic);
        assert_eq!(
            err.message,
            "order.applied belongs to the order family but was read from the quote topic"
        );
    }

    #[test]
    fn every_event_type_round_trips_and_belongs_to_its_family() {
        for event_type in EventType::ALL {
            assert_eq!(event_type.as_str().parse::<EventType>(), Ok(event_type));
            assert!(
                event_type
                    .as_str()
                    .starts_with(event_type.family().as_str())
            );
        }
    }

    #[test]
    fn the_shipped_examples_are_valid_events() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).expect("schemas/examples") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !name.starts_with("event.") {
                continue;
            }
            let payload = std::fs::read(&path).expect("example");
            let family = name.split('.').nth(1).expect("event.<family>.…");
            let family = Family::ALL
                .into_iter()
                .find(|f| f.as_str() == family)
                .expect("family");
            parse(&payload, family).unwrap_or_else(|err| panic!("{name}: {err}"));
            checked += 1;
        }
        assert!(checked >= 3);
    }
}
