-- slsync: online
-- `mentions list` (newest first) and `mentions export` (oldest first) read mentions in published_at
-- order: without this index they read and sorted the whole table (1.7 s for 20 rows, and 680 MB of
-- temporary files for an export at 2,000,000 mentions). Built CONCURRENTLY: writes go on meanwhile.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sl_mentions_published_idx ON sl_mentions (published_at, id);
