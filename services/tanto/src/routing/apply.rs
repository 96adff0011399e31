//! Writes a checked routing file to Postgres in one transaction.
//!
//! Applying upserts every entity the file names, and the lists of a named
//! entity (group members, linked groups, invitees, the company-wide accounts)
//! become exactly what the file says. With `prune`, the tenant's entities the
//! file does not name are removed too. Either all of it is written or none.

use anyhow::Context;
use tokio_postgres::Transaction;

use super::file::ValidRouting;

/// What an apply changed, for the operator's summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplySummary {
    pub accounts: u64,
    pub groups: u64,
    pub products: u64,
    pub customers: u64,
    pub pruned: u64,
}

/// Applies `routing` within `tx`; the caller commits.
pub async fn apply(
    tx: &Transaction<'_>,
    routing: &ValidRouting,
    prune: bool,
) -> anyhow::Result<ApplySummary> {
    lock_tenant(tx, &routing.tenant).await?;
    upsert_tenant(tx, routing).await?;
    let mut summary = ApplySummary {
        accounts: upsert_accounts(tx, routing)
            .await
            .context("Failed to write accounts")?,
        groups: upsert_groups(tx, routing)
            .await
            .context("Failed to write groups")?,
        products: upsert_products(tx, routing)
            .await
            .context("Failed to write products")?,
        customers: upsert_customers(tx, routing)
            .await
            .context("Failed to write customers")?,
        pruned: 0,
    };
    if prune {
        summary.pruned = prune_unnamed(tx, routing)
            .await
            .context("Failed to prune")?;
    }
    Ok(summary)
}

/// Two applies of the same tenant run one after the other, so neither sees
/// half of the other.
async fn lock_tenant(tx: &Transaction<'_>, tenant: &str) -> anyhow::Result<()> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('tanto.apply:' || $1))",
        &[&tenant],
    )
    .await
    .context("Failed to lock the tenant for apply")?;
    Ok(())
}

async fn upsert_tenant(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO tenants (tenant_id, store_name, disabled_mails) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id) DO UPDATE
         SET store_name = EXCLUDED.store_name, disabled_mails = EXCLUDED.disabled_mails,
             updated_at = now()",
        &[
            &routing.tenant,
            &routing.store_name,
            &routing.file.disabled_mails,
        ],
    )
    .await
    .context("Failed to write the tenant")?;
    Ok(())
}

async fn upsert_accounts(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<u64> {
    let accounts = &routing.file.accounts;
    let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
    let emails: Vec<&str> = accounts.iter().map(|a| a.email.trim()).collect();
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    let active: Vec<bool> = accounts.iter().map(|a| a.active).collect();
    let company_wide: Vec<bool> = accounts
        .iter()
        .map(|a| routing.file.company_wide.contains(&a.id))
        .collect();
    let written = tx
        .execute(
            "INSERT INTO accounts (tenant_id, account_id, email, name, active, company_wide)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bool[], $6::bool[])
             ON CONFLICT (tenant_id, account_id) DO UPDATE
             SET email = EXCLUDED.email, name = EXCLUDED.name, active = EXCLUDED.active,
                 company_wide = EXCLUDED.company_wide",
            &[
                &routing.tenant,
                &ids,
                &emails,
                &names,
                &active,
                &company_wide,
            ],
        )
        .await?;
    // The company-wide list is the tenant's, so accounts the file does not
    // name leave it too.
    tx.execute(
        "UPDATE accounts SET company_wide = false
         WHERE tenant_id = $1 AND company_wide AND NOT account_id = ANY($2)",
        &[&routing.tenant, &ids],
    )
    .await?;
    Ok(written)
}

async fn upsert_groups(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<u64> {
    let groups = &routing.file.groups;
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let written = tx
        .execute(
            "INSERT INTO account_groups (tenant_id, group_id, name)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[])
             ON CONFLICT (tenant_id, group_id) DO UPDATE SET name = EXCLUDED.name",
            &[&routing.tenant, &ids, &names],
        )
        .await?;
    let links = groups
        .iter()
        .flat_map(|g| g.members.iter().map(move |m| (g.id.as_str(), m.as_str())));
    replace_links(
        tx,
        &routing.tenant,
        "group_members",
        "group_id",
        "account_id",
        &ids,
        links,
    )
    .await?;
    Ok(written)
}

async fn upsert_products(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<u64> {
    let products = &routing.file.products;
    let ids: Vec<&str> = products.iter().map(|p| p.id.as_str()).collect();
    let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
    let written = tx
        .execute(
            "INSERT INTO products (tenant_id, product_id, name)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[])
             ON CONFLICT (tenant_id, product_id) DO UPDATE SET name = EXCLUDED.name",
            &[&routing.tenant, &ids, &names],
        )
        .await?;
    let links = products
        .iter()
        .flat_map(|p| p.groups.iter().map(move |g| (p.id.as_str(), g.as_str())));
    replace_links(
        tx,
        &routing.tenant,
        "product_groups",
        "product_id",
        "group_id",
        &ids,
        links,
    )
    .await?;
    Ok(written)
}

async fn upsert_customers(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<u64> {
    let customers = &routing.file.customers;
    let ids: Vec<&str> = customers.iter().map(|c| c.id.as_str()).collect();
    let names: Vec<&str> = customers.iter().map(|c| c.name.as_str()).collect();
    let admin_emails: Vec<Option<&str>> = customers
        .iter()
        .map(|c| c.admin.as_ref().map(|a| a.email.trim()))
        .collect();
    let admin_names: Vec<&str> = customers
        .iter()
        .map(|c| c.admin.as_ref().map_or("", |a| a.name.as_str()))
        .collect();
    let written = tx
        .execute(
            "INSERT INTO customers (tenant_id, customer_id, name, admin_email, admin_name)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (tenant_id, customer_id) DO UPDATE
             SET name = EXCLUDED.name, admin_email = EXCLUDED.admin_email,
                 admin_name = EXCLUDED.admin_name",
            &[&routing.tenant, &ids, &names, &admin_emails, &admin_names],
        )
        .await?;
    let links = customers
        .iter()
        .flat_map(|c| c.groups.iter().map(move |g| (c.id.as_str(), g.as_str())));
    replace_links(
        tx,
        &routing.tenant,
        "customer_groups",
        "customer_id",
        "group_id",
        &ids,
        links,
    )
    .await?;
    replace_invitees(tx, routing, &ids).await?;
    Ok(written)
}

async fn replace_invitees(
    tx: &Transaction<'_>,
    routing: &ValidRouting,
    customer_ids: &[&str],
) -> anyhow::Result<()> {
    tx.execute(
        "DELETE FROM customer_invitees WHERE tenant_id = $1 AND customer_id = ANY($2)",
        &[&routing.tenant, &customer_ids],
    )
    .await?;
    let invitees: Vec<(&str, &str, &str)> = routing
        .file
        .customers
        .iter()
        .flat_map(|c| {
            c.invitees
                .iter()
                .map(move |i| (c.id.as_str(), i.email.trim(), i.name.as_str()))
        })
        .collect();
    let customers: Vec<&str> = invitees.iter().map(|i| i.0).collect();
    let emails: Vec<&str> = invitees.iter().map(|i| i.1).collect();
    let names: Vec<&str> = invitees.iter().map(|i| i.2).collect();
    tx.execute(
        "INSERT INTO customer_invitees (tenant_id, customer_id, email, name)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])",
        &[&routing.tenant, &customers, &emails, &names],
    )
    .await?;
    Ok(())
}

/// Makes the links of the `owners` in a link table exactly `links`.
/// Table and column names come from this module only, never from input.
async fn replace_links<'a>(
    tx: &Transaction<'_>,
    tenant: &str,
    table: &str,
    owner_column: &str,
    target_column: &str,
    owners: &[&str],
    links: impl Iterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<()> {
    let (link_owners, link_targets): (Vec<&str>, Vec<&str>) = links.unzip();
    tx.execute(
        &format!("DELETE FROM {table} WHERE tenant_id = $1 AND {owner_column} = ANY($2)"),
        &[&tenant, &owners],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO {table} (tenant_id, {owner_column}, {target_column})
             SELECT $1, * FROM UNNEST($2::text[], $3::text[])"
        ),
        &[&tenant, &link_owners, &link_targets],
    )
    .await?;
    Ok(())
}

/// Removes the tenant's accounts, groups, products and customers that the
/// file does not name; their links go with them (ON DELETE CASCADE).
async fn prune_unnamed(tx: &Transaction<'_>, routing: &ValidRouting) -> anyhow::Result<u64> {
    let file = &routing.file;
    let named = [
        (
            "customers",
            "customer_id",
            file.customers.iter().map(|c| c.id.as_str()).collect(),
        ),
        (
            "products",
            "product_id",
            file.products.iter().map(|p| p.id.as_str()).collect(),
        ),
        (
            "account_groups",
            "group_id",
            file.groups.iter().map(|g| g.id.as_str()).collect(),
        ),
        (
            "accounts",
            "account_id",
            file.accounts
                .iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>(),
        ),
    ];
    let mut pruned = 0;
    for (table, column, ids) in named {
        pruned += tx
            .execute(
                &format!("DELETE FROM {table} WHERE tenant_id = $1 AND NOT {column} = ANY($2)"),
                &[&routing.tenant, &ids],
            )
            .await?;
    }
    Ok(pruned)
}
