-- Every attempt at a delivery, for the send history's detail view (`tanto
-- history show`): the ledger row keeps only the last failure. The ledger
-- writes a row when an attempt begins and completes it with the outcome, in
-- the same statement that changes the delivery's row, so the two never
-- disagree. A failure before an attempt could begin (a template that does
-- not render) is an attempt too.
--
-- outcome is the delivery's status after the attempt: sending while it runs,
-- then sent, retrying, dead or unknown. An attempt left 'sending' is one
-- whose process died; the next attempt's row says what came of it.

CREATE TABLE delivery_attempts (
    delivery_id  uuid NOT NULL REFERENCES deliveries (delivery_id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    -- The replay count of the record that made the attempt: which operator
    -- replay, if any, it belongs to.
    replay_count integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text NOT NULL,
    error_class  text,
    error        text,
    smtp_reply   text,
    PRIMARY KEY (delivery_id, attempt)
);
