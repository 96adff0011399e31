//! What the mailer's tests share: delivery messages built by hand and
//! published straight to the delivery topic, a reader of any topic from its
//! beginning, the ledger row of a delivery, and the MailDev inbox of one
//! test's sender.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tanto::catalog::RecipientClass;
use tanto::delivery::{
    CustomerRef, DeliveryMessage, EventRef, ItemView, MailRef, Recipient, SCHEMA_VERSION,
    TransactionView, delivery_id,
};
use tanto::event::EventType;
use uuid::Uuid;

use crate::{BROKERS, MAILDEV, Mail, TestEnv};

/// A delivery of mail 5-1-2 (order applied, to staff) of a new event of
/// this test's tenant, to `local@<test domain>`.
pub fn delivery(env: &TestEnv, local: &str) -> DeliveryMessage {
    let event_id = Uuid::new_v4().to_string();
    let address = format!("{local}@{}", env.domain());
    DeliveryMessage {
        schema_version: SCHEMA_VERSION,
        delivery_id: delivery_id(&env.id, &event_id, "5-1-2", &address),
        tenant_id: env.id.clone(),
        store_name: "ACME".into(),
        mail: MailRef {
            number: "5-1-2".into(),
            name: "注文申込".into(),
        },
        event: EventRef {
            event_id,
            event_type: EventType::OrderApplied,
            occurred_at: "2026-12-03T10:15:00+09:00".into(),
        },
        customer: CustomerRef {
            id: "C-1001".into(),
            name: "サンプル株式会社".into(),
        },
        transaction: TransactionView {
            id: "O-1".into(),
            number: "ORD-000123".into(),
            items: vec![ItemView {
                product_id: "P-100".into(),
                product_name: "クラウドバックアップ Pro".into(),
                quantity: "2".into(),
                unit_price: "12000".into(),
                amount: "24000".into(),
            }],
            total_amount: "24000".into(),
            currency: "JPY".into(),
        },
        recipient: Recipient {
            address,
            name: "田中 一郎".into(),
            classes: vec![RecipientClass::ProductStaff, RecipientClass::CustomerStaff],
        },
        replay_count: 0,
    }
}

/// Publishes deliveries to this test's delivery topic, keyed by delivery
/// id as the notifiers do, and waits until Kafka has them all.
pub async fn publish_deliveries(env: &TestEnv, deliveries: &[DeliveryMessage]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends = deliveries.iter().map(|delivery| {
        let (key, payload) = (delivery.delivery_id.to_string(), delivery.to_json());
        let producer = &producer;
        let topic = &env.topics.deliveries;
        async move {
            let record = FutureRecord::to(topic).key(&key).payload(&payload);
            producer.send(record, Duration::from_secs(30)).await
        }
    });
    for result in futures::future::join_all(sends).await {
        result.map_err(|(err, _)| err).unwrap();
    }
}

/// Reads `topic` from its beginning until `count` records have arrived or
/// `timeout` has passed, and returns what arrived. Partitions are assigned
/// directly, so there is no group to join and no wait for one.
pub async fn read_topic(topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("reader-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        partitions
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < count {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(result) => records.push(result.unwrap().detach()),
            Err(_) => break,
        }
    }
    records
}

/// A header of a record as text.
pub fn header(record: &OwnedMessage, key: &str) -> Option<String> {
    tanto::kafka::header_text(record.headers()?, key)
}

/// A delivery's ledger and history row, every column the history shows.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub tenant_id: String,
    pub event_id: String,
    pub event_type: String,
    pub transaction_number: String,
    pub management_number: String,
    pub mail_name: String,
    pub recipient_address: String,
    pub recipient_name: String,
    pub recipient_classes: Vec<String>,
    pub status: String,
    pub attempts: i32,
    pub unknown_outcomes: i32,
    pub subject: Option<String>,
    pub sender: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub last_error_class: Option<String>,
    pub last_error: Option<String>,
    pub last_smtp_reply: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub first_failed_at: Option<DateTime<Utc>>,
    pub last_failed_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The history row of `delivery_id`, if there is one.
pub async fn history(env: &TestEnv, delivery_id: Uuid) -> Option<HistoryRow> {
    let row = env
        .db()
        .await
        .query_opt(
            "SELECT tenant_id, event_id, event_type, transaction_number, management_number,
                    mail_name, recipient_address, recipient_name, recipient_classes, status,
                    attempts, unknown_outcomes, subject, sender, body_text, body_html,
                    last_error_class, last_error, last_smtp_reply, created_at, updated_at,
                    sent_at, last_attempt_at, first_failed_at, last_failed_at, next_attempt_at
             FROM deliveries WHERE delivery_id = $1",
            &[&delivery_id],
        )
        .await
        .unwrap()?;
    Some(HistoryRow {
        tenant_id: row.get(0),
        event_id: row.get(1),
        event_type: row.get(2),
        transaction_number: row.get(3),
        management_number: row.get(4),
        mail_name: row.get(5),
        recipient_address: row.get(6),
        recipient_name: row.get(7),
        recipient_classes: row.get(8),
        status: row.get(9),
        attempts: row.get(10),
        unknown_outcomes: row.get(11),
        subject: row.get(12),
        sender: row.get(13),
        body_text: row.get(14),
        body_html: row.get(15),
        last_error_class: row.get(16),
        last_error: row.get(17),
        last_smtp_reply: row.get(18),
        created_at: row.get(19),
        updated_at: row.get(20),
        sent_at: row.get(21),
        last_attempt_at: row.get(22),
        first_failed_at: row.get(23),
        last_failed_at: row.get(24),
        next_attempt_at: row.get(25),
    })
}

/// Waits until the delivery's row has `status`, and returns it.
pub async fn wait_for_status(
    env: &TestEnv,
    delivery_id: Uuid,
    status: &str,
    timeout: Duration,
) -> HistoryRow {
    let deadline = Instant::now() + timeout;
    loop {
        let row = history(env, delivery_id).await;
        if let Some(row) = row.as_ref().filter(|row| row.status == status) {
            return row.clone();
        }
        assert!(
            Instant::now() < deadline,
            "delivery {delivery_id} did not become {status} in {timeout:?}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many of this test's deliveries the ledger has in each status.
pub async fn status_counts(env: &TestEnv) -> BTreeMap<String, i64> {
    let rows = env
        .db()
        .await
        .query(
            "SELECT status, count(*) FROM deliveries GROUP BY status",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| (row.get(0), row.get(1))).collect()
}

/// Every mail MailDev holds from this test's sender, filtered by MailDev.
pub async fn mails_from_sender(env: &TestEnv) -> Vec<Mail> {
    let sender = format!("noreply@{}", env.domain());
    reqwest::get(format!("{MAILDEV}/api/email?from.address={sender}"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Deletes mails from MailDev, so that a test that sends many does not
/// slow down every later reader of the inbox.
pub async fn delete_mails(mails: &[Mail]) {
    let ids: Vec<&str> = mails.iter().map(|mail| mail.id.as_str()).collect();
    reqwest::Client::new()
        .post(format!("{MAILDEV}/api/email/delete"))
        .json(&serde_json::json!({ "ids": ids }))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
}

/// How many copies of each Message-ID arrived.
pub fn copies_per_message_id<S: AsRef<str>>(
    ids: impl IntoIterator<Item = S>,
) -> BTreeMap<String, usize> {
    let mut copies = BTreeMap::new();
    for id in ids {
        *copies.entry(id.as_ref().to_string()).or_default() += 1;
    }
    copies
}
