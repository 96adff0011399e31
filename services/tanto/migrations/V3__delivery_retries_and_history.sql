-- What the mailer needs to retry, to tell an unknown send outcome from a
-- known one, and to keep a full send history (docs/mailer.md).
--
-- status is one of:
--   sending   an attempt is under way (a row found in this state by a new
--             attempt means the previous one died mid-send: outcome unknown)
--   sent      the server accepted the mail
--   retrying  the last attempt failed transiently; the delivery waits on a
--             retry topic until next_attempt_at
--   dead      failed for good; the delivery is on the dead-letter topic
--   unknown   the outcome of the last attempt cannot be known and the mailer
--             is configured to hold such deliveries for an operator

ALTER TABLE deliveries
    ADD COLUMN replay_count     integer NOT NULL DEFAULT 0,
    -- Attempts whose outcome could not be known; each may have produced a
    -- copy at the server.
    ADD COLUMN unknown_outcomes integer NOT NULL DEFAULT 0,
    ADD COLUMN last_smtp_reply  text,
    ADD COLUMN last_attempt_at  timestamptz,
    ADD COLUMN first_failed_at  timestamptz,
    ADD COLUMN last_failed_at   timestamptz,
    ADD COLUMN next_attempt_at  timestamptz,
    ADD CONSTRAINT deliveries_status_known
        CHECK (status IN ('sending', 'sent', 'retrying', 'dead', 'unknown'));

-- Retention deletes by age of the last change.
CREATE INDEX deliveries_updated ON deliveries (updated_at);

-- What an operator must look at: held and dead deliveries.
CREATE INDEX deliveries_needing_an_operator ON deliveries (tenant_id, updated_at)
    WHERE status IN ('dead', 'unknown');
