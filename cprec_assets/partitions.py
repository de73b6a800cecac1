"""The ``domain`` partitions: one per target domain, keyed by the domain's slug
(``Sci-Fi`` -> ``sci-fi``). The ``interactions`` asset adds the configured target domains;
new domains arriving with new data are added the same way."""

import dagster as dg

domain_partitions = dg.DynamicPartitionsDefinition(name="domain")

# One writer per DuckDB file: every asset that writes the profile's database uses this pool
# (limit 1 by `concurrency.pools.default_limit` in dagster_home/dagster.yaml).
DUCKDB_POOL = "duckdb_write"
