-- The raw payload leaves sl_mentions for a table of its own, keyed by mention: labelling, refreshing
-- counts and tombstoning then rewrite a row of ~450 bytes instead of ~1,650, and a payload can be
-- dropped (or kept for N days) without touching its mention. New mentions write it here from now on;
-- the payloads already stored move in batches, outside this transaction (013), and the foreign key
-- comes with the last of them: checked row by row during the move, it would lock every mention.
CREATE TABLE sl_mention_raw (
    mention_id  bigint PRIMARY KEY,
    raw         jsonb  NOT NULL
);

-- How far 013's move has come; it drops this table, with sl_mentions.raw, when it is done.
CREATE TABLE sl_raw_move (
    moved_upto  bigint NOT NULL,   -- every mention up to this id has its payload in sl_mention_raw
    last_id     bigint NOT NULL    -- the newest mention when this migration ran
);
INSERT INTO sl_raw_move SELECT 0, coalesce(max(id), 0) FROM sl_mentions;
