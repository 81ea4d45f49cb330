-- The spine: sources, normalized mentions and the run log.

CREATE TABLE sl_sources (
    id                      integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id               bigint  NOT NULL CHECK (tenant_id >= 0),
    platform                text    NOT NULL,
    name                    text    NOT NULL,
    -- how the source authenticates: 'none' (mock), 'app' (app credentials from settings),
    -- 'user' (a token from `slsync connect`, kept in the token store, never here)
    connection_type         text    NOT NULL DEFAULT 'none',
    -- search parameters only (keywords, hashtags, mentions, exclude, languages, options); never secrets
    config                  jsonb   NOT NULL DEFAULT '{}'::jsonb,
    status                  text    NOT NULL DEFAULT 'active'
                                    CHECK (status IN ('pending', 'active', 'connected', 'failing', 'error')),
    error_message           text,
    sync_interval_minutes   integer NOT NULL DEFAULT 15 CHECK (sync_interval_minutes BETWEEN 1 AND 10080),
    last_sync_at            timestamptz,
    next_sync_at            timestamptz NOT NULL DEFAULT now(),
    -- where the next run starts; moves only when a run has saved its last page
    committed_cursor        jsonb,
    -- how far the current (or an interrupted) run got; committed with each page
    inflight_cursor         jsonb,
    rate_limit_limit        integer,
    rate_limit_remaining    integer,
    rate_limit_reset_at     timestamptz,
    consecutive_failures    integer NOT NULL DEFAULT 0,
    -- backend pid of the `sync due` session that claimed the source; a dead pid is no claim
    claimed_by              integer,
    claimed_at              timestamptz,
    -- kept by the save path so that status never counts mentions
    mentions_count          bigint  NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, platform, name)
);

CREATE INDEX sl_sources_due_idx ON sl_sources (next_sync_at) WHERE status IN ('active', 'connected', 'failing');
CREATE INDEX sl_sources_tenant_idx ON sl_sources (tenant_id, id);

CREATE TABLE sl_mentions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id           bigint  NOT NULL,
    -- a removed source keeps its mentions: they were collected and may already be analysed
    source_id           integer REFERENCES sl_sources (id) ON DELETE SET NULL,
    platform            text    NOT NULL,
    external_id         text    NOT NULL,
    url                 text,
    content             text,
    author_name         text,
    author_handle       text,
    author_followers    bigint,
    author_verified     boolean,
    published_at        timestamptz NOT NULL,
    likes_count         bigint,
    comments_count      bigint,
    shares_count        bigint,
    media_type          text,
    media_urls          text[],
    location            text,
    language            text,
    status              text    NOT NULL DEFAULT 'new',
    sentiment           text,
    sentiment_score     real,
    intent              text,
    raw                 jsonb,
    fetched_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sl_mentions_unique UNIQUE (tenant_id, platform, external_id)
);

CREATE INDEX sl_mentions_source_idx ON sl_mentions (source_id, published_at DESC);
CREATE INDEX sl_mentions_tenant_idx ON sl_mentions (tenant_id, published_at DESC);

CREATE TABLE sl_sync_runs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id       integer NOT NULL REFERENCES sl_sources (id) ON DELETE CASCADE,
    tenant_id       bigint  NOT NULL,
    trigger         text    NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at     timestamptz,
    -- 'abandoned': the process died mid-run; found and closed by the next run of the source
    status          text    NOT NULL DEFAULT 'running'
                            CHECK (status IN ('running', 'success', 'failed', 'rate_limited', 'partial', 'abandoned')),
    pages           integer NOT NULL DEFAULT 0,
    fetched         integer NOT NULL DEFAULT 0,
    saved           integer NOT NULL DEFAULT 0,
    duplicates      integer NOT NULL DEFAULT 0,
    errors          integer NOT NULL DEFAULT 0,
    message         text
);

CREATE INDEX sl_sync_runs_source_idx ON sl_sync_runs (source_id, started_at DESC);
CREATE INDEX sl_sync_runs_running_idx ON sl_sync_runs (source_id) WHERE status = 'running';
