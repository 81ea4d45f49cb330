-- When a source's grant ends and only `slsync connect` renews it (LinkedIn: the refresh token's year;
-- a token without refresh: its own expiry). NULL: no known end. `status` warns ahead of it.
ALTER TABLE sl_sources ADD COLUMN reconnect_by timestamptz;

-- Distinct items counted per credential over a rolling window (Instagram: 30 unique hashtags per
-- account per 7 days). One row per item with the time it was first counted in its current window.
CREATE TABLE sl_window_ledger (
    credential_key  text        NOT NULL,   -- names the credential (an account id or digest), never holds it
    item            text        NOT NULL,
    first_used_at   timestamptz NOT NULL DEFAULT now(),
    window_limit    integer     NOT NULL,   -- the limit and window it was counted under, for `status`
    window_length   interval    NOT NULL,
    PRIMARY KEY (credential_key, item)
);
