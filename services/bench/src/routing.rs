//! Routing time per event with a hundred rows of routing data and with a
//! million: the queries are bounded by tenant and index, so the time must
//! not grow with the data.

use crate::setup::BenchEnv;

/// Adds about 1.1 million rows of routing data for 1,000 other tenants:
/// 300,000 accounts and group memberships, 100,000 each of groups,
/// products, product links, customers and customer links.
pub async fn grow_to_a_million_rows(env: &BenchEnv) -> anyhow::Result<u64> {
    let db = crate::setup::connect(&env.database_url).await?;
    db.batch_execute(GROW).await?;
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM group_members)
                  + (SELECT count(*) FROM account_groups) + (SELECT count(*) FROM products)
                  + (SELECT count(*) FROM product_groups) + (SELECT count(*) FROM customers)
                  + (SELECT count(*) FROM customer_groups) + (SELECT count(*) FROM tenants)",
            &[],
        )
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0))?)
}

const GROW: &str = "
INSERT INTO tenants (tenant_id, store_name)
  SELECT 'noise-' || t, 'Noise ' || t FROM generate_series(1, 1000) t;
INSERT INTO accounts (tenant_id, account_id, email)
  SELECT 'noise-' || t, 'a' || k, 'a' || k || '@noise' || t || '.example'
  FROM generate_series(1, 1000) t, generate_series(0, 299) k;
INSERT INTO account_groups (tenant_id, group_id)
  SELECT 'noise-' || t, 'g' || k FROM generate_series(1, 1000) t, generate_series(0, 99) k;
INSERT INTO group_members (tenant_id, group_id, account_id)
  SELECT 'noise-' || t, 'g' || (k % 100), 'a' || k
  FROM generate_series(1, 1000) t, generate_series(0, 299) k;
INSERT INTO products (tenant_id, product_id)
  SELECT 'noise-' || t, 'P-' || k FROM generate_series(1, 1000) t, generate_series(0, 99) k;
INSERT INTO product_groups (tenant_id, product_id, group_id)
  SELECT 'noise-' || t, 'P-' || k, 'g' || k
  FROM generate_series(1, 1000) t, generate_series(0, 99) k;
INSERT INTO customers (tenant_id, customer_id, admin_email)
  SELECT 'noise-' || t, 'C-' || k, 'admin' || k || '@noise.example'
  FROM generate_series(1, 1000) t, generate_series(0, 99) k;
INSERT INTO customer_groups (tenant_id, customer_id, group_id)
  SELECT 'noise-' || t, 'C-' || k, 'g' || k
  FROM generate_series(1, 1000) t, generate_series(0, 99) k;
ANALYZE;
";
