-- The database token store (SLSYNC_TOKEN_STORE=database): a connected source's user token, sealed with
-- AES-256-GCM under a key that never enters the database (SLSYNC_TOKEN_KEY or the OS keyring), so every
-- machine that holds the key can sync the source. The source id is the cipher's associated data: a row
-- copied onto another source does not open.
CREATE TABLE sl_tokens (
    source_id   integer     NOT NULL,
    tenant_id   bigint      NOT NULL,
    key_id      text        NOT NULL,   -- names the key that sealed it (a digest), never holds it
    sealed      bytea       NOT NULL,   -- 12-byte nonce, then the ciphertext and its 16-byte tag
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, tenant_id),
    FOREIGN KEY (source_id, tenant_id) REFERENCES sl_sources (id, tenant_id) ON DELETE CASCADE
);

-- `slsync tokens rotate-key` finds the rows sealed under an older key without reading the others.
CREATE INDEX sl_tokens_key_idx ON sl_tokens (key_id);
