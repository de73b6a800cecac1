"""Jobs the demo and the UI launch: the unpartitioned corpus stage, and one domain.

Every job carries ``dagster/max_runtime``: run monitoring (dagster_home/dagster.yaml) stops a
run that takes longer, and a run whose process crashed is retried (``run_retries``).
Per-domain backfills: ``dagster job backfill -j domain_job --partitions crime,sci-fi``
(docs/OPERATIONS.md).
"""

import dagster as dg

from cprec_assets.partitions import domain_partitions

HOUR = 3600

cpt_job = dg.define_asset_job(
    "cpt_job",
    selection=dg.AssetSelection.assets("cpt_adapter"),
    description="Continual pre-training under WSA (the other variants are separate assets).",
    tags={"dagster/max_runtime": str(24 * HOUR)},
)

corpus_job = dg.define_asset_job(
    "corpus_job",
    selection=dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("domain_users"),
    description="Raw logs (configured sources and landed files) to the tokenised CPT corpus,"
                " with its checks.",
    tags={"dagster/max_runtime": str(2 * HOUR)},
)

domain_job = dg.define_asset_job(
    "domain_job",
    selection=dg.AssetSelection.assets("domain_users", "sasrec", "gru4rec", "llara_adapter",
                                       "sft_adapter", "candidate_sets", "evaluation",
                                       "full_ranking", "recommendations"),
    partitions_def=domain_partitions,
    description="Everything per target domain (one partition = one domain).",
    tags={"dagster/max_runtime": str(12 * HOUR)},
)
