//! The record of each routed event (table `routed_events`): what routing
//! decided beyond the deliveries, for the history. Routing the same event
//! again (a redelivery or a producer retry) updates the row and counts it.

use anyhow::Context;
use deadpool_postgres::Pool;

use super::Routed;
use crate::event::Event;

/// Records that `event` was routed to `routed`.
pub async fn record(pool: &Pool, event: &Event, routed: &Routed) -> anyhow::Result<()> {
    let client = pool.get().await.context("Failed to reach the database")?;
    let statement = client
        .prepare_cached(
            "INSERT INTO routed_events (tenant_id, event_id, event_type, transaction_number,
                 deliveries, empty_classes, disabled_mails, unknown_customer, unknown_products)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, event_id) DO UPDATE
             SET last_routed_at = now(), times_routed = routed_events.times_routed + 1",
        )
        .await?;
    let empty_classes: Vec<String> = routed
        .empty_classes
        .iter()
        .map(|(number, class)| format!("{number}:{class}"))
        .collect();
    let deliveries = i32::try_from(routed.deliveries.len()).unwrap_or(i32::MAX);
    let unknown_products = i32::try_from(routed.unknown_products).unwrap_or(i32::MAX);
    let query = crate::metrics::metrics()
        .db_query_duration
        .with_label_values(&["record_routed_event"]);
    let _timer = query.start_timer();
    client
        .execute(
            &statement,
            &[
                &event.tenant_id,
                &event.event_id,
                &event.event_type.as_str(),
                &event.transaction.number,
                &deliveries,
                &empty_classes,
                &routed.disabled_mails,
                &routed.unknown_customer,
                &unknown_products,
            ],
        )
        .await
        .context("Failed to record the routed event")?;
    Ok(())
}
