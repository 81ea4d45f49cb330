-- slsync: online
-- Moves the raw payloads that earlier releases stored in sl_mentions.raw to sl_mention_raw, 10,000
-- mentions a transaction: each batch commits with how far it got, so no lock is held for long and an
-- interrupted move continues where it stopped. Then, under a short exclusive lock, the payloads a process
-- of the earlier release wrote meanwhile, and the column goes. 2,000,000 mentions: see benchmarks/scale.py.
-- The bytes of the old rows stay in the table's pages until they are rewritten (VACUUM FULL sl_mentions,
-- or pg_repack online, gives them back at once).
DO $$
DECLARE
    moved bigint;
    last bigint;
    batch_end bigint;
BEGIN
    IF to_regclass('sl_raw_move') IS NULL THEN
        RETURN;  -- done by an earlier run
    END IF;
    SELECT moved_upto, last_id INTO moved, last FROM sl_raw_move;
    IF moved < last THEN
        RAISE WARNING 'upgrading the database: moving the raw payloads of mentions % to % to sl_mention_raw'
            ' (once, in batches; about a minute per million mentions)', moved + 1, last;
    END IF;
    LOOP
        SELECT max(id) INTO batch_end
        FROM (SELECT id FROM sl_mentions WHERE id > moved AND id <= last ORDER BY id LIMIT 10000) AS batch;
        EXIT WHEN batch_end IS NULL;
        INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)
        SELECT id, tenant_id, raw FROM sl_mentions WHERE id > moved AND id <= batch_end AND raw IS NOT NULL
        ON CONFLICT (mention_id, tenant_id) DO NOTHING;
        UPDATE sl_raw_move SET moved_upto = batch_end;
        COMMIT;
        IF batch_end / 200000 > moved / 200000 THEN
            RAISE NOTICE 'raw payloads moved up to mention % of %', batch_end, last;
        END IF;
        moved := batch_end;
    END LOOP;

    -- An exclusive lock for the end; waiting for it would queue every reader behind a long export, so it
    -- is asked for briefly and again until it is free.
    LOOP
        BEGIN
            SET LOCAL lock_timeout = '2s';
            LOCK TABLE sl_mentions IN ACCESS EXCLUSIVE MODE;
            EXIT;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'sl_mentions is busy; trying again for the last step of the move';
            PERFORM pg_sleep(1);
        END;
    END LOOP;
    INSERT INTO sl_mention_raw (mention_id, tenant_id, raw)
    SELECT id, tenant_id, raw FROM sl_mentions WHERE id > last AND raw IS NOT NULL
    ON CONFLICT (mention_id, tenant_id) DO NOTHING;
    ALTER TABLE sl_mentions DROP COLUMN raw;
    DROP TABLE sl_raw_move;
END $$;
