-- The run log grows by one row per source per run (100,000 sources every 15 minutes: ~10 million
-- rows a day); sync due deletes finished runs older than SLSYNC_RUN_LOG_DAYS in bounded batches.
CREATE INDEX sl_sync_runs_finished_idx ON sl_sync_runs (finished_at) WHERE finished_at IS NOT NULL;
