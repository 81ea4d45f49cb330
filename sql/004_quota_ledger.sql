-- Daily quotas counted in units (YouTube Data API: 10,000 units a day per API key, search.list
-- costing 100). One row per credential and quota day; every process and machine shares the count.
CREATE TABLE sl_quota_ledger (
    credential_key  text    NOT NULL,   -- names the credential (a digest), never holds it
    quota_day       date    NOT NULL,   -- the platform's quota day (YouTube: Pacific time)
    units_used      integer NOT NULL DEFAULT 0,
    daily_limit     integer NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (credential_key, quota_day)
);
