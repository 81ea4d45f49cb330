-- slsync: online
-- The 7-day sentiment breakdown of `status` (per source: how many positive, negative, neutral, not yet
-- analysed) read one heap page per mention; with the labels in the index it is an index-only scan
-- (benchmarks/scale.py: `status --tenant`). It replaces sl_mentions_source_idx (012), same key: a label
-- update writes a new entry in every index of sl_mentions anyway (sl_mentions_new_idx's predicate names
-- status, so no label update is HOT), so carrying the labels costs a few bytes an entry, not an index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS sl_mentions_source_labels_idx
    ON sl_mentions (source_id, published_at DESC) INCLUDE (status, sentiment);
