-- Analysis of new mentions: who labelled a mention and when, and a small index over the backlog
-- so that claiming the next batch never scans what is already processed.
ALTER TABLE sl_mentions
    ADD COLUMN analyzed_at timestamptz,
    ADD COLUMN analyzer text,
    ADD CONSTRAINT sl_mentions_status_check CHECK (status IN ('new', 'processed'));

-- by id alone: it serves the backlog in order whatever the filter (tenant, sources or none)
CREATE INDEX sl_mentions_new_idx ON sl_mentions (id) WHERE status = 'new';
