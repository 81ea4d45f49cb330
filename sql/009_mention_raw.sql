-- The raw payload leaves sl_mentions for a table of its own, keyed by mention: labelling, refreshing
-- counts and tombstoning then rewrite a row of ~450 bytes instead of ~1,650, and a payload can be
-- dropped (or kept for N days: mention ids grow with fetched_at) without touching its mention. New
-- mentions write it here from now on; the payloads already stored move in batches, outside this
-- transaction (013).
-- Keyed, like the mention, by (id, tenant_id) (007: every key of a tenant's table names the tenant).
CREATE TABLE sl_mention_raw (
    mention_id  bigint NOT NULL,
    tenant_id   bigint NOT NULL,
    raw         jsonb  NOT NULL,
    PRIMARY KEY (mention_id, tenant_id)
);

-- A payload goes with its mention. Not a foreign key: its check on every insert (a lookup and a row lock
-- on the mention) cost the save path 12% of its throughput (benchmarks/README.md), and the save path
-- writes a payload only for the mention it has just inserted, in the same statement.
CREATE FUNCTION sl_mention_raw_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE sl_mention_raw;
    ELSE
        DELETE FROM sl_mention_raw r USING gone WHERE r.mention_id = gone.id AND r.tenant_id = gone.tenant_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER sl_mentions_delete_raw AFTER DELETE ON sl_mentions
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION sl_mention_raw_delete();
CREATE TRIGGER sl_mentions_truncate_raw AFTER TRUNCATE ON sl_mentions
    FOR EACH STATEMENT EXECUTE FUNCTION sl_mention_raw_delete();

-- How far 013's move has come; it drops this table, with sl_mentions.raw, when it is done.
CREATE TABLE sl_raw_move (
    moved_upto  bigint NOT NULL,   -- every mention up to this id has its payload in sl_mention_raw
    last_id     bigint NOT NULL    -- the newest mention when this migration ran
);
INSERT INTO sl_raw_move SELECT 0, coalesce(max(id), 0) FROM sl_mentions;
