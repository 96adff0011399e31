-- The audit of operator replays of dead-lettered records (`tanto dead-letters
-- ... replay`): one row per run, saying who replayed what, and one row per
-- dead-letter record each run republished. A later run skips a record that
-- has a row here unless the operator forces it (docs/operators.md).

CREATE TABLE replays (
    replay_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- What was replayed: 'events' (tanto.events.dlq); 'deliveries' later.
    kind              text NOT NULL,
    dead_letter_topic text NOT NULL,
    actor             text NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    -- running, finished, interrupted (Ctrl-C), failed (see error).
    status            text NOT NULL,
    -- The filter or the ids the operator gave, as the CLI parsed them.
    selection         jsonb NOT NULL,
    forced            boolean NOT NULL,
    rate_per_second   integer NOT NULL,
    chosen            integer NOT NULL,
    replayed          integer NOT NULL DEFAULT 0,
    skipped           integer NOT NULL DEFAULT 0,
    error             text
);

CREATE INDEX replays_started ON replays (started_at DESC);

-- A record is named by its place on the dead-letter topic. Several rows for
-- one record mean it was replayed again with --force.
CREATE TABLE replayed_records (
    dead_letter_topic text NOT NULL,
    dead_letter_partition integer NOT NULL,
    dead_letter_offset bigint NOT NULL,
    replay_id         bigint NOT NULL REFERENCES replays,
    destination_topic text NOT NULL,
    replayed_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dead_letter_topic, dead_letter_partition, dead_letter_offset, replay_id)
);
