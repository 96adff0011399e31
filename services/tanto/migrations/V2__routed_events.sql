-- One row per routed event: what routing decided beyond the deliveries
-- themselves, so the history shows a class that reached nobody, a mail the
-- tenant switched off, and ids the routing data did not know.
CREATE TABLE routed_events (
    tenant_id        text NOT NULL,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    transaction_number text NOT NULL,
    deliveries       integer NOT NULL,
    -- "management number:class" pairs that resolved to nobody.
    empty_classes    text[] NOT NULL,
    disabled_mails   text[] NOT NULL,
    unknown_customer boolean NOT NULL,
    unknown_products integer NOT NULL,
    first_routed_at  timestamptz NOT NULL DEFAULT now(),
    last_routed_at   timestamptz NOT NULL DEFAULT now(),
    times_routed     integer NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, event_id)
);
