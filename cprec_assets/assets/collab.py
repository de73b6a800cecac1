"""Per-domain next-item models, one asset per registered next-item system
(cprec_core.systems): SASRec (a classic baseline and LLaRA's item encoder), GRU4Rec (a
classic baseline), and the text systems whose item table also reads an LLM's title
embeddings (``sasrec_text_cpt``, ...), all trained by cprec_core.training.next_item for
every seed of their encoder's settings."""

import hashlib
import json

import dagster as dg

from cprec_assets.assets.data import domain_users
from cprec_assets.automation import TRAIN
from cprec_assets.metadata import table
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.tracking import MlflowTracking
from cprec_assets.run_log import run_log
from cprec_assets.versions import code_version
from cprec_core.data.domain_users import load_domain_data
from cprec_core.systems import NEXT_ITEM_SYSTEMS, System, embedding_asset
from cprec_core.training.next_item import train_system

DESCRIPTIONS = {
    "sasrec": "SASRec trained on the domain's train split, early-stopped on validation NDCG@10.",
    "gru4rec": "GRU4Rec, the recurrent classic baseline, trained like SASRec on the same split.",
}


def _description(system: System) -> str:
    if system.name in DESCRIPTIONS:
        return DESCRIPTIONS[system.name]
    return (f"{system.next_item.upper() if system.next_item == 'gru4rec' else 'SASRec'} whose"
            f" item table adds the `{system.item_source}` title embeddings (through a small"
            " MLP) to its ID embeddings; trained and early-stopped like the ID model.")


def build_next_item_asset(system: System) -> dg.AssetsDefinition:
    text = system.kind == "text"
    deps = [domain_users, *([embedding_asset(system.item_source)] if text else [])]

    @dg.asset(name=system.asset, group_name="collab", kinds={"pytorch"}, deps=deps,
              partitions_def=domain_partitions, pool="train",
              code_version=code_version("2", system.next_item, *(["item_text"] if text else [])),
              automation_condition=TRAIN if system.automated else None,
              tags={"system": system.name}, description=_description(system))
    def _asset(context: dg.AssetExecutionContext, cprec: ProfileResource,
               mlflow: MlflowTracking) -> dg.MaterializeResult:
        profile = cprec.profile
        with cprec.connect(read_only=True) as con:  # in pool `train`: waits for a writer
            data = load_domain_data(con, context.partition_key)
        manifests = train_system(mlflow.profile(profile), system.name, data,
                                 context.partition_key, log=run_log(context),
                                 tags=mlflow.tags(context))
        m = manifests[0]
        seen = [[x["data_version"], x["config"], x["shape"], x["seed"], x["item_embeddings"]]
                for x in manifests]  # the data, settings and embeddings each seed read
        version = hashlib.sha256(json.dumps(seen, sort_keys=True).encode())
        curve = [(r["epoch"], r["loss"], r["hr@10"], r["ndcg@10"]) for r in m["history"]]
        def mean(split: str, key: str) -> float:
            return round(sum(x[split][key] for x in manifests) / len(manifests), 4)
        return dg.MaterializeResult(data_version=dg.DataVersion(version.hexdigest()[:16]), metadata={
            "domain": m["domain"], "data_version": m["data_version"],  # the data it saw
            **mlflow.run_metadata(profile, m.get("mlflow_run_id")),  # the first seed's
            "item_embeddings": dg.MetadataValue.json(m["item_embeddings"] or {}),
            "users": m["users"], "items": m["shape"]["n_items"], "epochs": m["epochs"],
            "best_epoch": m["best_epoch"],  # of the first seed
            "seeds": ",".join(str(x["seed"]) for x in manifests),
            # the mean over seeds; each seed's in per_seed
            "valid_ndcg@10": mean("valid", "ndcg@10"), "test_hr@10": mean("test", "hr@10"),
            "test_ndcg@10": mean("test", "ndcg@10"),
            "per_seed": table(["seed", "epochs", "best epoch", "seconds", "valid NDCG@10",
                               "test HR@10", "test NDCG@10"],
                              [(x["seed"], x["epochs"], x["best_epoch"], x["seconds"],
                                x["valid"]["ndcg@10"], x["test"]["hr@10"], x["test"]["ndcg@10"])
                               for x in manifests]),
            "training": table(["epoch", "loss", "valid HR@10", "valid NDCG@10"],
                                           curve[-15:]),
            "model": dg.MetadataValue.path(str(profile.layout.next_item_model(
                system.name, context.partition_key, m["seed"]).path)),
        })

    return _asset


next_item_assets = [build_next_item_asset(s) for s in NEXT_ITEM_SYSTEMS]
sasrec, gru4rec = next_item_assets[:2]
