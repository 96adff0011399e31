//! Turns events into their deliveries: which catalog mails each event
//! sends, and to which addresses, by the routing data in Postgres.
//!
//! A whole batch of events costs three queries, whatever the number of
//! events and recipients, run together on one connection (tokio-postgres
//! pipelines them): the tenants with the customers, the products' names,
//! and every candidate recipient of every class. The rules of domain.md are
//! then applied per event in memory by [`plan`], which a unit test reaches
//! without a database.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deadpool_postgres::Pool;

use crate::catalog::{Catalog, RecipientClass};
use crate::delivery::{
    CustomerRef, DeliveryMessage, EventRef, ItemView, MailRef, Recipient, SCHEMA_VERSION,
    TransactionView, delivery_id, normalize_address,
};
use crate::event::{Event, RejectReason, Rejection};
use crate::metrics::{metrics, timed};

/// What routing an event produced, with the facts the history and the
/// metrics need about who was not reached.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routed {
    pub deliveries: Vec<DeliveryMessage>,
    /// (management number, class) pairs that resolved to nobody.
    pub empty_classes: Vec<(String, RecipientClass)>,
    /// Catalog mails of this event type that the tenant switched off.
    pub disabled_mails: Vec<String>,
    pub unknown_customer: bool,
    pub unknown_products: usize,
}

/// Why routing did not finish: the event's fault, or the database's.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The event cannot be routed; it goes to the dead-letter topic.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Not the event's fault: retry once the database answers.
    #[error("routing data unavailable")]
    Unavailable(#[source] anyhow::Error),
}

/// The routing data one event needs, as read from Postgres.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingView {
    pub store_name: String,
    pub disabled_mails: Vec<String>,
    /// `None` when the customer is not in the routing data.
    pub customer_name: Option<String>,
    pub product_names: HashMap<String, String>,
    pub candidates: Vec<Candidate>,
}

/// One way an address is reached: through one class (and possibly one of
/// several groups of that class).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub class: RecipientClass,
    pub address: String,
    pub name: String,
}

/// Reads routing data from Postgres and plans deliveries.
#[derive(Debug, Clone)]
pub struct Router {
    pool: Pool,
    catalog: Catalog,
}

/// The tenant and customer of each (tenant, customer) pair of the batch;
/// a pair whose tenant is unknown has no row.
const TENANTS_QUERY: &str = "
    SELECT q.tenant_id, q.customer_id, t.store_name, t.disabled_mails, c.name AS customer_name
    FROM unnest($1::text[], $2::text[]) AS q(tenant_id, customer_id)
    JOIN tenants t ON t.tenant_id = q.tenant_id
    LEFT JOIN customers c ON c.tenant_id = q.tenant_id AND c.customer_id = q.customer_id";

const PRODUCTS_QUERY: &str = "
    SELECT p.tenant_id, p.product_id, p.name
    FROM unnest($1::text[], $2::text[]) AS q(tenant_id, product_id)
    JOIN products p ON p.tenant_id = q.tenant_id AND p.product_id = q.product_id";

/// Every candidate of the batch with the key it hangs on: the tenant for
/// company-wide accounts, (tenant, product) for product staff, (tenant,
/// customer) for the rest. $1 tenants; $2, $3 (tenant, customer) pairs;
/// $4, $5 (tenant, product) pairs. Inactive accounts are filtered here, so
/// they never become candidates.
const CANDIDATES_QUERY: &str = "
    SELECT 'company_wide' AS class, a.tenant_id, '' AS key, a.email, a.name
    FROM accounts a
    WHERE a.tenant_id = ANY($1) AND a.company_wide AND a.active
  UNION ALL
    SELECT 'product_staff', q.tenant_id, q.product_id, a.email, a.name
    FROM unnest($4::text[], $5::text[]) AS q(tenant_id, product_id)
    JOIN product_groups pg ON pg.tenant_id = q.tenant_id AND pg.product_id = q.product_id
    JOIN group_members m ON m.tenant_id = pg.tenant_id AND m.group_id = pg.group_id
    JOIN accounts a ON a.tenant_id = m.tenant_id AND a.account_id = m.account_id
    WHERE a.active
  UNION ALL
    SELECT 'customer_staff', q.tenant_id, q.customer_id, a.email, a.name
    FROM unnest($2::text[], $3::text[]) AS q(tenant_id, customer_id)
    JOIN customer_groups cg ON cg.tenant_id = q.tenant_id AND cg.customer_id = q.customer_id
    JOIN group_members m ON m.tenant_id = cg.tenant_id AND m.group_id = cg.group_id
    JOIN accounts a ON a.tenant_id = m.tenant_id AND a.account_id = m.account_id
    WHERE a.active
  UNION ALL
    SELECT 'customer_admin', q.tenant_id, q.customer_id, c.admin_email, c.admin_name
    FROM unnest($2::text[], $3::text[]) AS q(tenant_id, customer_id)
    JOIN customers c ON c.tenant_id = q.tenant_id AND c.customer_id = q.customer_id
    WHERE c.admin_email IS NOT NULL
  UNION ALL
    SELECT 'customer_invitee', q.tenant_id, q.customer_id, i.email, i.name
    FROM unnest($2::text[], $3::text[]) AS q(tenant_id, customer_id)
    JOIN customer_invitees i ON i.tenant_id = q.tenant_id AND i.customer_id = q.customer_id";

impl Router {
    pub fn new(pool: Pool, catalog: Catalog) -> Self {
        Self { pool, catalog }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Routes one event.
    pub async fn route(&self, event: &Event) -> Result<Routed, RouteError> {
        let mut routed = self
            .route_batch(&[event])
            .await
            .map_err(RouteError::Unavailable)?;
        routed
            .pop()
            .expect("one result per event")
            .map_err(RouteError::Rejected)
    }

    /// Routes a batch of events with three queries: one result per event,
    /// in order, or an error if the routing data could not be read.
    pub async fn route_batch(
        &self,
        events: &[&Event],
    ) -> anyhow::Result<Vec<Result<Routed, Rejection>>> {
        let data = self.load(events).await?;
        Ok(events
            .iter()
            .map(|event| self.route_one(event, &data))
            .collect())
    }

    fn route_one(&self, event: &Event, data: &BatchData) -> Result<Routed, Rejection> {
        let Some(view) = data.view(event) else {
            return Err(Rejection::new(
                RejectReason::UnknownTenant,
                format!("tenant '{}' has no routing data", event.tenant_id),
            ));
        };
        Ok(plan(&self.catalog, event, &view))
    }

    /// Reads what the batch needs. The time waiting for a connection is not
    /// counted as query time.
    async fn load(&self, events: &[&Event]) -> anyhow::Result<BatchData> {
        let client = self.pool.get().await?;
        let keys = BatchKeys::of(events);
        let query = metrics()
            .db_query_duration
            .with_label_values(&["routing_view"]);
        let (tenants, products, candidates) = timed(&query, async {
            tokio::try_join!(
                async {
                    let statement = client.prepare_cached(TENANTS_QUERY).await?;
                    client
                        .query(&statement, &[&keys.pair_tenants, &keys.pair_customers])
                        .await
                },
                async {
                    let statement = client.prepare_cached(PRODUCTS_QUERY).await?;
                    client
                        .query(&statement, &[&keys.product_tenants, &keys.products])
                        .await
                },
                async {
                    let statement = client.prepare_cached(CANDIDATES_QUERY).await?;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
                        &keys.tenants,
                        &keys.pair_tenants,
                        &keys.pair_customers,
                        &keys.product_tenants,
                        &keys.products,
                    ];
                    client.query(&statement, &params).await
                },
            )
        })
        .await?;
        Ok(BatchData::from_rows(&tenants, &products, &candidates))
    }
}

/// The distinct keys of a batch, as the arrays the queries take.
#[derive(Debug, Default)]
struct BatchKeys {
    tenants: Vec<String>,
    pair_tenants: Vec<String>,
    pair_customers: Vec<String>,
    product_tenants: Vec<String>,
    products: Vec<String>,
}

impl BatchKeys {
    fn of(events: &[&Event]) -> Self {
        let mut tenants = BTreeSet::new();
        let mut pairs = BTreeSet::new();
        let mut products = BTreeSet::new();
        for event in events {
            tenants.insert(event.tenant_id.clone());
            pairs.insert((event.tenant_id.clone(), event.customer_id.clone()));
            for product in event.product_ids() {
                products.insert((event.tenant_id.clone(), product));
            }
        }
        let (pair_tenants, pair_customers) = pairs.into_iter().unzip();
        let (product_tenants, products) = products.into_iter().unzip();
        Self {
            tenants: tenants.into_iter().collect(),
            pair_tenants,
            pair_customers,
            product_tenants,
            products,
        }
    }
}

/// A tenant row joined with one of its customers.
#[derive(Debug, Clone)]
struct TenantRow {
    store_name: String,
    disabled_mails: Vec<String>,
    customer_name: Option<String>,
}

/// The rows of a batch, indexed by the keys events look them up by.
#[derive(Debug, Default)]
struct BatchData {
    /// (tenant, customer) -> the tenant, and the customer if known.
    tenants: HashMap<(String, String), TenantRow>,
    product_names: HashMap<(String, String), String>,
    /// (class, tenant, key) -> candidates; the key is "" for company-wide,
    /// the product id for product staff, the customer id otherwise.
    candidates: HashMap<(RecipientClass, String, String), Vec<Candidate>>,
}

impl BatchData {
    fn from_rows(
        tenants: &[tokio_postgres::Row],
        products: &[tokio_postgres::Row],
        candidates: &[tokio_postgres::Row],
    ) -> Self {
        let mut data = Self::default();
        for row in tenants {
            let pair = (row.get("tenant_id"), row.get("customer_id"));
            let tenant = TenantRow {
                store_name: row.get("store_name"),
                disabled_mails: row.get("disabled_mails"),
                customer_name: row.get("customer_name"),
            };
            data.tenants.insert(pair, tenant);
        }
        for row in products {
            data.product_names
                .insert((row.get(0), row.get(1)), row.get(2));
        }
        for row in candidates {
            let Some(class) = RecipientClass::parse(row.get(0)) else {
                continue;
            };
            let candidate = Candidate {
                class,
                address: row.get(3),
                name: row.get(4),
            };
            data.candidates
                .entry((class, row.get(1), row.get(2)))
                .or_default()
                .push(candidate);
        }
        data
    }

    /// The routing data of one event; `None` when its tenant is unknown.
    fn view(&self, event: &Event) -> Option<RoutingView> {
        let tenant = event.tenant_id.clone();
        let TenantRow {
            store_name,
            disabled_mails,
            customer_name,
        } = self
            .tenants
            .get(&(tenant.clone(), event.customer_id.clone()))?
            .clone();
        let product_ids = event.product_ids();
        let mut keys = vec![(RecipientClass::CompanyWide, String::new())];
        keys.extend(
            product_ids
                .iter()
                .map(|p| (RecipientClass::ProductStaff, p.clone())),
        );
        for class in [
            RecipientClass::CustomerStaff,
            RecipientClass::CustomerAdmin,
            RecipientClass::CustomerInvitee,
        ] {
            keys.push((class, event.customer_id.clone()));
        }
        let candidates = keys
            .into_iter()
            .filter_map(|(class, key)| self.candidates.get(&(class, tenant.clone(), key)))
            .flatten()
            .cloned()
            .collect();
        let product_names = product_ids
            .into_iter()
            .filter_map(|id| {
                let name = self.product_names.get(&(tenant.clone(), id.clone()))?;
                Some((id, name.clone()))
            })
            .collect();
        Some(RoutingView {
            store_name,
            disabled_mails,
            customer_name,
            product_names,
            candidates,
        })
    }
}

/// Applies the routing rules to one event and its routing data: the catalog
/// mails of the event type that the tenant has not switched off, each to
/// every address reached through its classes, once per address, with every
/// class through which the address was reached.
pub fn plan(catalog: &Catalog, event: &Event, view: &RoutingView) -> Routed {
    let mut routed = Routed {
        unknown_customer: view.customer_name.is_none(),
        unknown_products: event
            .product_ids()
            .iter()
            .filter(|id| !view.product_names.contains_key(*id))
            .count(),
        ..Routed::default()
    };
    let transaction = transaction_view(event, view);
    let customer = CustomerRef {
        id: event.customer_id.clone(),
        name: view.customer_name.clone().unwrap_or_default(),
    };
    for mail in catalog.for_event(event.event_type) {
        if view.disabled_mails.contains(&mail.number) {
            routed.disabled_mails.push(mail.number.clone());
            continue;
        }
        let recipients = recipients_for(&mail.recipients, &view.candidates);
        for class in &mail.recipients {
            if !recipients.iter().any(|r| r.classes.contains(class)) {
                routed.empty_classes.push((mail.number.clone(), *class));
            }
        }
        routed
            .deliveries
            .extend(recipients.into_iter().map(|recipient| DeliveryMessage {
                schema_version: SCHEMA_VERSION,
                delivery_id: delivery_id(
                    &event.tenant_id,
                    &event.event_id,
                    &mail.number,
                    &recipient.address,
                ),
                tenant_id: event.tenant_id.clone(),
                store_name: view.store_name.clone(),
                mail: MailRef {
                    number: mail.number.clone(),
                    name: mail.name.clone(),
                },
                event: EventRef {
                    event_id: event.event_id.clone(),
                    event_type: event.event_type,
                    occurred_at: event.occurred_at.to_rfc3339(),
                },
                customer: customer.clone(),
                transaction: transaction.clone(),
                recipient,
                replay_count: 0,
            }));
    }
    routed
}

/// One recipient per normalized address, ordered by address, among the
/// candidates of `classes`. The first non-empty name wins.
fn recipients_for(classes: &[RecipientClass], candidates: &[Candidate]) -> Vec<Recipient> {
    let mut by_address: BTreeMap<String, (Recipient, BTreeSet<RecipientClass>)> = BTreeMap::new();
    for candidate in candidates.iter().filter(|c| classes.contains(&c.class)) {
        let (recipient, reached_by) = by_address
            .entry(normalize_address(&candidate.address))
            .or_insert_with(|| {
                let recipient = Recipient {
                    address: candidate.address.trim().to_string(),
                    name: String::new(),
                    classes: Vec::new(),
                };
                (recipient, BTreeSet::new())
            });
        if recipient.name.is_empty() {
            recipient.name = candidate.name.clone();
        }
        reached_by.insert(candidate.class);
    }
    by_address
        .into_values()
        .map(|(recipient, reached_by)| Recipient {
            classes: reached_by.into_iter().collect(),
            ..recipient
        })
        .collect()
}

fn transaction_view(event: &Event, view: &RoutingView) -> TransactionView {
    let transaction = &event.transaction;
    TransactionView {
        id: transaction.id.clone(),
        number: transaction.number.clone(),
        items: transaction
            .items
            .iter()
            .map(|item| {
                let product_name = item
                    .product_name
                    .clone()
                    .filter(|name| !name.is_empty())
                    .or_else(|| view.product_names.get(&item.product_id).cloned())
                    .unwrap_or_default();
                let unit_price = item.unit_price.clone().unwrap_or_default();
                ItemView {
                    product_id: item.product_id.clone(),
                    product_name,
                    quantity: item.quantity.map(|q| q.to_string()).unwrap_or_default(),
                    amount: line_amount(item.quantity, &unit_price).unwrap_or_default(),
                    unit_price,
                }
            })
            .collect(),
        total_amount: transaction.total_amount.clone().unwrap_or_default(),
        currency: transaction.currency.clone().unwrap_or_default(),
    }
}

/// Quantity times unit price, computed in decimal (amounts are strings so
/// that no float ever rounds a price).
fn line_amount(quantity: Option<u64>, unit_price: &str) -> Option<String> {
    let price: rust_decimal::Decimal = unit_price.parse().ok()?;
    let total = price.checked_mul(rust_decimal::Decimal::from(quantity?))?;
    Some(total.normalize().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Family, parse};
    use RecipientClass::*;

    const CATALOG: &str = r#"
mails:
  - { number: "5-1-1", name: 注文申込, event_type: order.applied, audience: customer,
      recipients: [customer_admin, customer_invitee], subject: s, template: t, origin: platform }
  - { number: "5-1-2", name: 注文申込, event_type: order.applied, audience: staff,
      recipients: [company_wide, product_staff, customer_staff], subject: s, template: t,
      origin: platform }
  - { number: "5-1-4", name: 注文確定, event_type: order.confirmed, audience: staff,
      recipients: [company_wide], subject: s, template: t, origin: platform }
"#;

    fn event() -> Event {
        let payload = serde_json::json!({
            "event_id": "e-1", "event_type": "order.applied",
            "occurred_at": "2026-12-03T10:15:00+09:00", "tenant_id": "acme",
            "customer_id": "C-1",
            "transaction": { "id": "O-1", "number": "ORD-1", "items": [
                { "product_id": "P-1", "quantity": 3, "unit_price": "1200.50" },
                { "product_id": "P-2", "product_name": "Given" } ] }
        });
        parse(payload.to_string().as_bytes(), Family::Order).expect("event")
    }

    fn candidate(class: RecipientClass, address: &str, name: &str) -> Candidate {
        Candidate {
            class,
            address: address.into(),
            name: name.into(),
        }
    }

    fn view(candidates: Vec<Candidate>) -> RoutingView {
        RoutingView {
            store_name: "ACME".into(),
            disabled_mails: vec![],
            customer_name: Some("Sample".into()),
            product_names: [("P-1".to_string(), "Backup".to_string())].into(),
            candidates,
        }
    }

    fn catalog() -> Catalog {
        Catalog::parse(CATALOG).expect("catalog")
    }

    fn staff_mail(routed: &Routed) -> Vec<(&str, &[RecipientClass])> {
        routed
            .deliveries
            .iter()
            .filter(|d| d.mail.number == "5-1-2")
            .map(|d| (d.recipient.address.as_str(), d.recipient.classes.as_slice()))
            .collect()
    }

    #[test]
    fn an_address_reached_twice_gets_one_mail_with_both_classes() {
        let routed = plan(
            &catalog(),
            &event(),
            &view(vec![
                candidate(ProductStaff, "tanaka@acme.example", "田中"),
                candidate(ProductStaff, "Tanaka@ACME.example", ""),
                candidate(CustomerStaff, "tanaka@acme.example", ""),
                candidate(CompanyWide, "ops@acme.example", ""),
            ]),
        );
        assert_eq!(
            staff_mail(&routed),
            vec![
                ("ops@acme.example", &[CompanyWide][..]),
                ("tanaka@acme.example", &[ProductStaff, CustomerStaff][..]),
            ]
        );
        assert_eq!(routed.deliveries[1].recipient.name, "田中");
    }

    #[test]
    fn classes_that_reach_nobody_are_reported_not_failed() {
        let routed = plan(
            &catalog(),
            &event(),
            &view(vec![candidate(CompanyWide, "ops@x.example", "")]),
        );
        assert_eq!(routed.deliveries.len(), 1);
        assert_eq!(
            routed.empty_classes,
            vec![
                ("5-1-1".to_string(), CustomerAdmin),
                ("5-1-1".to_string(), CustomerInvitee),
                ("5-1-2".to_string(), ProductStaff),
                ("5-1-2".to_string(), CustomerStaff),
            ]
        );
    }

    #[test]
    fn a_disabled_mail_is_not_planned() {
        let mut view = view(vec![candidate(CustomerAdmin, "admin@c.example", "")]);
        view.disabled_mails = vec!["5-1-1".into()];
        let routed = plan(&catalog(), &event(), &view);
        assert!(routed.deliveries.is_empty());
        assert_eq!(routed.disabled_mails, vec!["5-1-1".to_string()]);
    }

    #[test]
    fn items_get_names_and_decimal_amounts() {
        let routed = plan(
            &catalog(),
            &event(),
            &view(vec![candidate(CustomerAdmin, "a@c.example", "")]),
        );
        let items = &routed.deliveries[0].transaction.items;
        assert_eq!(
            (items[0].product_name.as_str(), items[0].amount.as_str()),
            ("Backup", "3601.5")
        );
        assert_eq!(
            (items[1].product_name.as_str(), items[1].amount.as_str()),
            ("Given", "")
        );
        assert_eq!(routed.unknown_products, 1);
    }
}
