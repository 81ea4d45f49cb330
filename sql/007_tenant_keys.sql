-- Every key of a tenant's table names the tenant, so the tables can be distributed by tenant_id (Citus)
-- without a redesign: a distributed table's primary key and unique indexes must include the distribution
-- column, and a foreign key between co-located tables must join on it. Lookups by id alone still use
-- the primary keys, whose first column stays id. tests/test_schema.py checks every tenant table.
ALTER TABLE sl_mentions DROP CONSTRAINT sl_mentions_source_id_fkey;
ALTER TABLE sl_sync_runs DROP CONSTRAINT sl_sync_runs_source_id_fkey;
ALTER TABLE sl_coverage_gaps DROP CONSTRAINT sl_coverage_gaps_source_id_fkey;

ALTER TABLE sl_sources DROP CONSTRAINT sl_sources_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE sl_mentions DROP CONSTRAINT sl_mentions_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE sl_sync_runs DROP CONSTRAINT sl_sync_runs_pkey, ADD PRIMARY KEY (id, tenant_id);
ALTER TABLE sl_coverage_gaps DROP CONSTRAINT sl_coverage_gaps_pkey, ADD PRIMARY KEY (id, tenant_id),
    DROP CONSTRAINT sl_coverage_gaps_source_id_stream_from_at_key,
    ADD CONSTRAINT sl_coverage_gaps_source_key UNIQUE (source_id, tenant_id, stream, from_at);

-- A removed source keeps its mentions: only source_id becomes NULL, the tenant stays (PostgreSQL 15+).
ALTER TABLE sl_mentions ADD CONSTRAINT sl_mentions_source_id_fkey FOREIGN KEY (source_id, tenant_id)
    REFERENCES sl_sources (id, tenant_id) ON DELETE SET NULL (source_id);
ALTER TABLE sl_sync_runs ADD CONSTRAINT sl_sync_runs_source_id_fkey FOREIGN KEY (source_id, tenant_id)
    REFERENCES sl_sources (id, tenant_id) ON DELETE CASCADE;
ALTER TABLE sl_coverage_gaps ADD CONSTRAINT sl_coverage_gaps_source_id_fkey FOREIGN KEY (source_id, tenant_id)
    REFERENCES sl_sources (id, tenant_id) ON DELETE CASCADE;
