-- slsync: online
-- Replaced by sl_mentions_source_labels_idx (011), which serves the same reads.
DROP INDEX CONCURRENTLY IF EXISTS sl_mentions_source_idx;
