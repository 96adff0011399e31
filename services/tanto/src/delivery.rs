//! The delivery message: one mail to one address, as the notifiers write it to
//! `tanto.deliveries` and the mailer reads it.
//!
//! A message holds everything needed to render and send its mail, so a copy
//! on a retry or dead-letter topic can be sent again without looking anything
//! up. Its `delivery_id` is derived from what makes it unique, so routing the
//! same event twice yields the same ids and the mailer can drop the repeat.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::catalog::RecipientClass;
use crate::event::EventType;

/// The JSON Schema of a delivery message, shipped in `schemas/`.
pub const DELIVERY_SCHEMA: &str = include_str!("../../../schemas/delivery.schema.json");

/// Bumped only for a change an older mailer cannot read.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMessage {
    pub schema_version: u32,
    pub delivery_id: Uuid,
    pub tenant_id: String,
    pub store_name: String,
    pub mail: MailRef,
    pub event: EventRef,
    pub customer: CustomerRef,
    pub transaction: TransactionView,
    pub recipient: Recipient,
    /// How many times an operator has replayed this delivery.
    #[serde(default)]
    pub replay_count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailRef {
    pub number: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRef {
    pub event_id: String,
    pub event_type: EventType,
    /// RFC 3339, as the producer wrote it.
    pub occurred_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerRef {
    pub id: String,
    /// Empty when the customer is not in the routing data.
    pub name: String,
}

/// The transaction as the templates show it: optional values are empty
/// strings, never missing, because rendering is strict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransactionView {
    pub id: String,
    pub number: String,
    pub items: Vec<ItemView>,
    pub total_amount: String,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemView {
    pub product_id: String,
    pub product_name: String,
    pub quantity: String,
    pub unit_price: String,
    /// Quantity times unit price, when both are known.
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub name: String,
    /// Every class through which this address was reached, in class order.
    pub classes: Vec<RecipientClass>,
}

/// The form in which two addresses count as the same mailbox: trimmed and
/// lower-cased. Mail systems treat the local part case-insensitively in
/// practice, and a person must not get two mails because two records spell
/// their address differently.
pub fn normalize_address(address: &str) -> String {
    address.trim().to_lowercase()
}

/// The deterministic id of the delivery of mail `number` of event `event_id`
/// of `tenant_id` to `address`: a UUID (version 8) made of the first 16 bytes
/// of a SHA-256 over the parts.
pub fn delivery_id(tenant_id: &str, event_id: &str, number: &str, address: &str) -> Uuid {
    let mut hasher = Sha256::new();
    for part in [tenant_id, event_id, number, &normalize_address(address)] {
        hasher.update(part.as_bytes());
        // A separator that cannot appear in the parts keeps ("ab","c") and
        // ("a","bc") apart.
        hasher.update([0u8]);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

impl DeliveryMessage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a delivery message always serializes")
    }

    pub fn from_json(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_stable_and_ignores_address_spelling() {
        let a = delivery_id("acme", "e-1", "5-1-2", "Tanaka@ACME.example ");
        let b = delivery_id("acme", "e-1", "5-1-2", "tanaka@acme.example");
        assert_eq!(a, b);
        assert_eq!(a.get_version_num(), 8);
    }

    #[test]
    fn every_part_of_the_id_matters() {
        let base = delivery_id("acme", "e-1", "5-1-2", "a@acme.example");
        assert_ne!(base, delivery_id("other", "e-1", "5-1-2", "a@acme.example"));
        assert_ne!(base, delivery_id("acme", "e-2", "5-1-2", "a@acme.example"));
        assert_ne!(base, delivery_id("acme", "e-1", "5-1-4", "a@acme.example"));
        assert_ne!(base, delivery_id("acme", "e-1", "5-1-2", "b@acme.example"));
        assert_ne!(
            delivery_id("ab", "c", "n", "x"),
            delivery_id("a", "bc", "n", "x")
        );
    }

    fn delivery_validator() -> jsonschema::Validator {
        let schema: serde_json::Value = serde_json::from_str(DELIVERY_SCHEMA).expect("schema");
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("valid schema")
    }

    #[test]
    fn the_shipped_example_is_a_valid_delivery() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/examples/delivery.json");
        let text = std::fs::read_to_string(path).expect("example");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let errors: Vec<String> = delivery_validator()
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        let message = DeliveryMessage::from_json(text.as_bytes()).expect("deserializes");
        assert_eq!(message.recipient.classes.len(), 2);
    }

    #[test]
    fn what_the_notifier_writes_matches_the_schema() {
        let message = DeliveryMessage {
            schema_version: SCHEMA_VERSION,
            delivery_id: delivery_id("acme", "e-1", "5-1-1", "admin@sample.example"),
            tenant_id: "acme".into(),
            store_name: "ACME".into(),
            mail: MailRef {
                number: "5-1-1".into(),
                name: "注文申込".into(),
            },
            event: EventRef {
                event_id: "e-1".into(),
                event_type: EventType::OrderApplied,
                occurred_at: "2026-12-03T10:15:00+09:00".into(),
            },
            customer: CustomerRef {
                id: "C-1001".into(),
                name: String::new(),
            },
            transaction: TransactionView {
                id: "O-1".into(),
                number: "ORD-1".into(),
                items: vec![ItemView {
                    product_id: "P-1".into(),
                    product_name: String::new(),
                    quantity: String::new(),
                    unit_price: String::new(),
                    amount: String::new(),
                }],
                total_amount: String::new(),
                currency: String::new(),
            },
            recipient: Recipient {
                address: "admin@sample.example".into(),
                name: String::new(),
                classes: vec![RecipientClass::CustomerAdmin],
            },
            replay_count: 0,
        };
        let value = serde_json::to_value(&message).expect("serializes");
        let errors: Vec<String> = delivery_validator()
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            DeliveryMessage::from_json(&message.to_json()).expect("round trip"),
            message
        );
    }
}
