-- Mentions that stay true: engagement read again on a decaying schedule, tombstones of posts the platform
-- no longer shows, and an audit of erasure requests. New columns without a default: no table rewrite.
ALTER TABLE sl_mentions
    -- when the post's counts and text are next read again (SLSYNC_REFRESH_SCHEDULE, hours after
    -- publication); NULL: not any more (past the schedule, or the platform has no lookup for it)
    ADD COLUMN refresh_due_at timestamptz,
    ADD COLUMN refreshed_at timestamptz,
    -- the platform no longer shows the post (deleted, removed, made private): a tombstone, its content,
    -- author, links, media and payload cleared; the row stays so that no later sync stores it again
    ADD COLUMN deleted_at timestamptz;

-- What `status` shows of the refresh without counting mentions.
ALTER TABLE sl_sources
    ADD COLUMN last_refresh_at timestamptz,
    ADD COLUMN refreshed_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN deleted_count   bigint NOT NULL DEFAULT 0;

-- `slsync mentions forget`: who asked for an author's mentions to be erased, when, and how many went.
-- Never the content, and never the handle itself: a digest of it, so that a later question ("was this
-- person's data erased?") can be answered by computing the digest again, while the audit holds no name.
CREATE TABLE sl_erasures (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    requested_by     text        NOT NULL,   -- the operating-system user and host that ran the command
    platform         text        NOT NULL,
    tenant_id        bigint,                 -- NULL: every tenant
    author_digest    text        NOT NULL,   -- sha256 of "platform:handle" (handle in lower case, no @)
    mentions_deleted bigint      NOT NULL
);
