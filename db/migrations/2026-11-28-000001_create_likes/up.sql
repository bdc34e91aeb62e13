-- One row per (post, user) pair ever liked or unliked: its current state and
-- the event that set it. The latest event by (event_at_micros, event_id) wins,
-- so an older event written late (after a requeue) cannot undo a newer one.
CREATE TABLE likes (
    post_id         text     NOT NULL,
    user_id         text     NOT NULL,
    liked           boolean  NOT NULL,
    event_at_micros bigint   NOT NULL,
    event_id        uuid     NOT NULL,
    -- What the event that set this row did to the post's count: -1, 0 or +1.
    -- The batch upsert writes it so its RETURNING clause can report it:
    -- PostgreSQL 15 cannot return a row's pre-update values.
    last_delta      smallint NOT NULL,
    PRIMARY KEY (post_id, user_id)
);

-- One row per post with at least one like ever: the number of pairs whose
-- `liked` is true. Maintained by the same statement that changes `likes`, one
-- row update per post per batch, so reads never count over `likes`.
-- No CHECK (count >= 0): PostgreSQL checks it on the row proposed by
-- INSERT .. ON CONFLICT, which carries a negative delta for unlikes.
CREATE TABLE like_counts (
    post_id text   PRIMARY KEY,
    count   bigint NOT NULL
);
