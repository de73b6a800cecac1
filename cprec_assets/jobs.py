"""Jobs the demo and the UI launch: the unpartitioned corpus stage, and one domain."""

import dagster as dg

from cprec_assets.partitions import domain_partitions

cpt_job = dg.define_asset_job(
    "cpt_job",
    selection=dg.AssetSelection.assets("cpt_adapter"),
    description="Continual pre-training under WSA (the other variants are separate assets).",
)

corpus_job = dg.define_asset_job(
    "corpus_job",
    selection=dg.AssetSelection.groups("corpus") - dg.AssetSelection.assets("domain_users"),
    description="Raw logs to the tokenised CPT corpus, with its checks.",
)

domain_job = dg.define_asset_job(
    "domain_job",
    selection=dg.AssetSelection.assets("domain_users", "sasrec", "llara_adapter", "sft_adapter",
                                       "candidate_sets", "evaluation"),
    partitions_def=domain_partitions,
    description="Everything per target domain (one partition = one domain).",
)
