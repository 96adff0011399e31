-- Routing data: one business (tenant) owns every row below it. Every key
-- starts with tenant_id so that the same product or customer id in two
-- tenants is two different rows and no query can cross tenants by accident.

CREATE TABLE tenants (
    tenant_id      text PRIMARY KEY,
    store_name     text NOT NULL,
    disabled_mails text[] NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    tenant_id    text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    account_id   text NOT NULL,
    email        text NOT NULL,
    name         text NOT NULL DEFAULT '',
    active       boolean NOT NULL DEFAULT true,
    company_wide boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, account_id)
);

CREATE TABLE account_groups (
    tenant_id text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    group_id  text NOT NULL,
    name      text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, group_id)
);

CREATE TABLE group_members (
    tenant_id  text NOT NULL,
    group_id   text NOT NULL,
    account_id text NOT NULL,
    PRIMARY KEY (tenant_id, group_id, account_id),
    FOREIGN KEY (tenant_id, group_id) REFERENCES account_groups ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, account_id) REFERENCES accounts ON DELETE CASCADE
);

CREATE TABLE products (
    tenant_id  text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    product_id text NOT NULL,
    name       text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, product_id)
);

CREATE TABLE product_groups (
    tenant_id  text NOT NULL,
    product_id text NOT NULL,
    group_id   text NOT NULL,
    PRIMARY KEY (tenant_id, product_id, group_id),
    FOREIGN KEY (tenant_id, product_id) REFERENCES products ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, group_id) REFERENCES account_groups ON DELETE CASCADE
);

CREATE TABLE customers (
    tenant_id   text NOT NULL REFERENCES tenants ON DELETE CASCADE,
    customer_id text NOT NULL,
    name        text NOT NULL DEFAULT '',
    admin_email text,
    admin_name  text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, customer_id)
);

CREATE TABLE customer_groups (
    tenant_id   text NOT NULL,
    customer_id text NOT NULL,
    group_id    text NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, group_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, group_id) REFERENCES account_groups ON DELETE CASCADE
);

CREATE TABLE customer_invitees (
    tenant_id   text NOT NULL,
    customer_id text NOT NULL,
    email       text NOT NULL,
    name        text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, customer_id, email),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers ON DELETE CASCADE
);

-- The delivery ledger and send history (メール送信履歴): one row per
-- delivered address, keyed by the deterministic delivery id, so a delivery
-- that arrives twice finds its row and is not sent twice.
CREATE TABLE deliveries (
    delivery_id        uuid PRIMARY KEY,
    tenant_id          text NOT NULL,
    event_id           text NOT NULL,
    event_type         text NOT NULL,
    transaction_number text NOT NULL,
    management_number  text NOT NULL,
    mail_name          text NOT NULL,
    recipient_address  text NOT NULL,
    recipient_name     text NOT NULL DEFAULT '',
    recipient_classes  text[] NOT NULL,
    status             text NOT NULL,
    attempts           integer NOT NULL DEFAULT 0,
    subject            text,
    sender             text,
    body_text          text,
    body_html          text,
    last_error_class   text,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz
);

CREATE INDEX deliveries_tenant_created ON deliveries (tenant_id, created_at DESC);
CREATE INDEX deliveries_event ON deliveries (tenant_id, event_id);
