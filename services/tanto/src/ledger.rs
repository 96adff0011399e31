//! The delivery ledger and send history, one row per delivery id.
//!
//! A delivery moves `sending` -> `sent`, or `sending` -> `dead`. A row found
//! `sent` when the delivery arrives again means the mail went out already, so
//! the repeat is acknowledged and skipped: that is how a redelivered message,
//! a duplicated event or a repeated route sends nothing twice.

use anyhow::Context;
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::delivery::DeliveryMessage;
use crate::render::RenderedMail;

/// Whether a delivery should be sent now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Send it; this is attempt number `attempt` (1 for the first).
    Send { attempt: i32 },
    /// The ledger says it was sent already.
    AlreadySent,
}

/// How a delivery failed for good, as the history records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    pool: Pool,
}

impl Ledger {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Records an attempt to send `delivery`, unless it was sent already.
    pub async fn claim(&self, delivery: &DeliveryMessage) -> anyhow::Result<Claim> {
        let client = self
            .pool
            .get()
            .await
            .context("Failed to reach the ledger")?;
        let statement = client
            .prepare_cached(
                "INSERT INTO deliveries (delivery_id, tenant_id, event_id, event_type,
                     transaction_number, management_number, mail_name, recipient_address,
                     recipient_name, recipient_classes, status, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'sending', 1)
                 ON CONFLICT (delivery_id) DO UPDATE
                 SET status = 'sending', attempts = deliveries.attempts + 1, updated_at = now()
                 WHERE deliveries.status <> 'sent'
                 RETURNING attempts",
            )
            .await?;
        let classes: Vec<&str> = delivery
            .recipient
            .classes
            .iter()
            .map(|c| c.as_str())
            .collect();
        let row = client
            .query_opt(
                &statement,
                &[
                    &delivery.delivery_id,
                    &delivery.tenant_id,
                    &delivery.event.event_id,
                    &delivery.event.event_type.as_str(),
                    &delivery.transaction.number,
                    &delivery.mail.number,
                    &delivery.mail.name,
                    &delivery.recipient.address,
                    &delivery.recipient.name,
                    &classes,
                ],
            )
            .await
            .context("Failed to record the delivery attempt")?;
        Ok(match row {
            Some(row) => Claim::Send {
                attempt: row.get(0),
            },
            None => Claim::AlreadySent,
        })
    }

    /// Records a delivery the SMTP server accepted, with what was sent.
    pub async fn mark_sent(
        &self,
        id: Uuid,
        sender: &str,
        mail: &RenderedMail,
    ) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("Failed to reach the ledger")?;
        client
            .execute(
                "UPDATE deliveries
                 SET status = 'sent', sender = $2, subject = $3, body_text = $4, body_html = $5,
                     sent_at = now(), updated_at = now()
                 WHERE delivery_id = $1",
                &[&id, &sender, &mail.subject, &mail.text, &mail.html],
            )
            .await
            .context("Failed to record the delivery as sent")?;
        Ok(())
    }

    /// Records a delivery that failed for good, with what was rendered of it.
    pub async fn mark_dead(
        &self,
        id: Uuid,
        sender: &str,
        mail: Option<&RenderedMail>,
        failure: &Failure,
    ) -> anyhow::Result<()> {
        let client = self
            .pool
            .get()
            .await
            .context("Failed to reach the ledger")?;
        client
            .execute(
                "UPDATE deliveries
                 SET status = 'dead', sender = $2, subject = $3, body_text = $4, body_html = $5,
                     last_error_class = $6, last_error = $7, updated_at = now()
                 WHERE delivery_id = $1",
                &[
                    &id,
                    &sender,
                    &mail.map(|m| &m.subject),
                    &mail.map(|m| &m.text),
                    &mail.map(|m| &m.html),
                    &failure.class,
                    &failure.detail,
                ],
            )
            .await
            .context("Failed to record the delivery as dead")?;
        Ok(())
    }
}
