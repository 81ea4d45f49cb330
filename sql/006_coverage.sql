-- Coverage: how far each source's history is known to be complete, the gaps a platform's reach or
-- listing cap left in it, and schedules that follow a source's volume.
ALTER TABLE sl_sources
    -- every mention published before this was read (the start of the last finished sync, or of its
    -- first part when it was resumed); NULL before a first sync
    ADD COLUMN covered_until       timestamptz,
    -- when the sync in flight (an interrupted run waiting to be continued) began
    ADD COLUMN inflight_started_at timestamptz,
    -- why the source is behind since its last finished sync: what a coverage gap gives as its reason
    ADD COLUMN behind_reason       text,
    -- 'fixed': every sync_interval_minutes; 'auto': sync_interval_minutes follows the source's volume
    -- within min_interval_minutes and max_interval_minutes
    ADD COLUMN interval_mode       text NOT NULL DEFAULT 'fixed' CHECK (interval_mode IN ('fixed', 'auto')),
    ADD COLUMN min_interval_minutes integer CHECK (min_interval_minutes BETWEEN 1 AND 10080),
    ADD COLUMN max_interval_minutes integer CHECK (max_interval_minutes BETWEEN 1 AND 10080),
    -- new mentions a minute, smoothed over the last syncs (auto intervals and priority read it)
    ADD COLUMN mention_rate        double precision,
    ADD CONSTRAINT sl_sources_auto_bounds CHECK (
        interval_mode = 'fixed'
        OR (min_interval_minutes IS NOT NULL AND max_interval_minutes IS NOT NULL
            AND min_interval_minutes <= max_interval_minutes));

-- A source synced before this release is covered from the start of its last successful run.
UPDATE sl_sources s SET covered_until = r.started_at
FROM (SELECT source_id, max(started_at) AS started_at FROM sl_sync_runs WHERE status = 'success'
      GROUP BY source_id) r
WHERE r.source_id = s.id;

-- A stretch of a source's history no sync could read: mentions published between from_at and to_at
-- may be lost for good. One row per source, stream and start: a retried run widens its row (to_at)
-- instead of adding another. The unique key's index serves the lookups by source.
CREATE TABLE sl_coverage_gaps (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       integer NOT NULL REFERENCES sl_sources (id) ON DELETE CASCADE,
    tenant_id       bigint  NOT NULL,
    -- '' for the whole source (its platform's reach passed); else the query, hashtag... a cap cut short
    stream          text    NOT NULL DEFAULT '',
    from_at         timestamptz NOT NULL,
    to_at           timestamptz NOT NULL CHECK (to_at > from_at),
    reason          text    NOT NULL
                            CHECK (reason IN ('cap', 'failing', 'rate_limited', 'quota', 'cut_short', 'not_synced')),
    -- how many mentions the gap may hold, from the rate the source showed; NULL when nothing tells
    missed_estimate bigint  CHECK (missed_estimate >= 0),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (source_id, stream, from_at)
);

-- kept as long as the run log (SLSYNC_RUN_LOG_DAYS): sync due deletes older ones with the old runs
CREATE INDEX sl_coverage_gaps_to_idx ON sl_coverage_gaps (to_at);
CREATE INDEX sl_coverage_gaps_tenant_idx ON sl_coverage_gaps (tenant_id, source_id);
