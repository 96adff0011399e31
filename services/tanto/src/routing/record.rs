//! The record of each routed event (table `routed_events`): what routing
//! decided beyond the deliveries, for the history. Routing the same event
//! again (a redelivery or a producer retry) updates the row and counts it.

use std::collections::HashMap;

use anyhow::Context;
use deadpool_postgres::Pool;

use super::Routed;
use crate::event::Event;

/// Records that each event was routed as said, in one statement.
pub async fn record(pool: &Pool, routed: &[(&Event, &Routed)]) -> anyhow::Result<()> {
    let client = pool.get().await.context("Failed to reach the database")?;
    let statement = client
        .prepare_cached(
            "INSERT INTO routed_events (tenant_id, event_id, event_type, transaction_number,
                 deliveries, empty_classes, disabled_mails, unknown_customer, unknown_products,
                 times_routed)
             SELECT tenant_id, event_id, event_type, transaction_number, deliveries,
                 string_to_array(empty_classes, ','), string_to_array(disabled_mails, ','),
                 unknown_customer, unknown_products, times
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
                 $7::text[], $8::bool[], $9::int[], $10::int[])
                 AS r(tenant_id, event_id, event_type, transaction_number, deliveries,
                      empty_classes, disabled_mails, unknown_customer, unknown_products, times)
             ON CONFLICT (tenant_id, event_id) DO UPDATE
             SET last_routed_at = now(),
                 times_routed = routed_events.times_routed + EXCLUDED.times_routed",
        )
        .await?;
    let rows = Rows::of(routed);
    let query = crate::metrics::metrics()
        .db_query_duration
        .with_label_values(&["record_routed_events"]);
    let _timer = query.start_timer();
    client
        .execute(
            &statement,
            &[
                &rows.tenants,
                &rows.event_ids,
                &rows.event_types,
                &rows.numbers,
                &rows.deliveries,
                &rows.empty_classes,
                &rows.disabled_mails,
                &rows.unknown_customers,
                &rows.unknown_products,
                &rows.times,
            ],
        )
        .await
        .context("Failed to record the routed events")?;
    Ok(())
}

/// The columns of the rows to insert, one row per event: an event that
/// appears twice in a batch (a producer retry) is one row routed twice, since
/// one statement cannot update a row twice. Lists travel as comma-joined text,
/// since Postgres cannot unnest an array of arrays of different lengths;
/// management numbers and class names hold no commas.
#[derive(Default)]
struct Rows {
    tenants: Vec<String>,
    event_ids: Vec<String>,
    event_types: Vec<&'static str>,
    numbers: Vec<String>,
    deliveries: Vec<i32>,
    empty_classes: Vec<String>,
    disabled_mails: Vec<String>,
    unknown_customers: Vec<bool>,
    unknown_products: Vec<i32>,
    times: Vec<i32>,
}

impl Rows {
    fn of<'a>(routed: &[(&'a Event, &Routed)]) -> Self {
        let mut rows = Self::default();
        let mut seen: HashMap<(&'a str, &'a str), usize> = HashMap::new();
        for (event, routed) in routed {
            if let Some(&row) = seen.get(&(event.tenant_id.as_str(), event.event_id.as_str())) {
                rows.times[row] += 1;
                continue;
            }
            seen.insert((&event.tenant_id, &event.event_id), rows.times.len());
            rows.times.push(1);
            let empty: Vec<String> = routed
                .empty_classes
                .iter()
                .map(|(number, class)| format!("{number}:{class}"))
                .collect();
            rows.tenants.push(event.tenant_id.clone());
            rows.event_ids.push(event.event_id.clone());
            rows.event_types.push(event.event_type.as_str());
            rows.numbers.push(event.transaction.number.clone());
            rows.deliveries
                .push(i32::try_from(routed.deliveries.len()).unwrap_or(i32::MAX));
            rows.empty_classes.push(empty.join(","));
            rows.disabled_mails.push(routed.disabled_mails.join(","));
            rows.unknown_customers.push(routed.unknown_customer);
            rows.unknown_products
                .push(i32::try_from(routed.unknown_products).unwrap_or(i32::MAX));
        }
        rows
    }
}
