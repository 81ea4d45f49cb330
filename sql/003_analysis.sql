-- Analysis of new mentions: who labelled a mention and when, and a small index over the backlog
-- so that claiming the next batch never scans what is already processed.
ALTER TABLE sl_mentions
    ADD COLUMN analyzed_at timestamptz,
    ADD COLUMN analyzer text,
    ADD CONSTRAINT sl_mentions_status_check CHECK (status IN ('new', 'processed'));

CREATE INDEX sl_mentions_new_idx ON sl_mentions (tenant_id, id) WHERE status = 'new';
