-- slsync: online
-- The mentions due to be read again, per source (a refresh reads a source's posts with that source's
-- credentials); only scheduled mentions are in it, so it holds the last few days of posts, not the whole
-- table. Built CONCURRENTLY: writes go on meanwhile (until it exists, the refresh finds its posts slowly).
CREATE INDEX CONCURRENTLY IF NOT EXISTS sl_mentions_refresh_idx
    ON sl_mentions (source_id, refresh_due_at) WHERE refresh_due_at IS NOT NULL;
