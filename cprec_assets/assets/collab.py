"""Per-domain collaborative models: SASRec (a classic baseline and LLaRA's item encoder) and
GRU4Rec (a classic baseline), both trained by cprec_core.training.next_item."""

import hashlib
import json

import dagster as dg

from cprec_assets.assets.data import domain_users
from cprec_assets.automation import TRAIN
from cprec_assets.metadata import table
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import ProfileResource
from cprec_assets.run_log import run_log
from cprec_core.data.domain_users import load_domain_data
from cprec_core.training.next_item import train_next_item


def _next_item_asset(kind: str, description: str) -> dg.AssetsDefinition:
    @dg.asset(name=kind, group_name="collab", kinds={"pytorch"}, deps=[domain_users],
              partitions_def=domain_partitions, pool="train", code_version="1",
              automation_condition=TRAIN, description=description)
    def _asset(context: dg.AssetExecutionContext, cprec: ProfileResource) -> dg.MaterializeResult:
        profile = cprec.profile
        with cprec.connect(read_only=True) as con:  # in pool `train`: waits for a writer
            data = load_domain_data(con, context.partition_key)
        files = profile.layout.next_item_model(kind, context.partition_key)
        m = train_next_item(data, getattr(profile, kind), files, log=run_log(context))
        version = hashlib.sha256(json.dumps([m["data_version"], m["config"], m["shape"]]).encode())
        curve = [(r["epoch"], r["loss"], r["hr@10"], r["ndcg@10"]) for r in m["history"]]
        return dg.MaterializeResult(data_version=dg.DataVersion(version.hexdigest()[:16]), metadata={
            "domain": m["domain"], "data_version": m["data_version"],  # the data it saw
            "users": m["users"], "items": m["shape"]["n_items"], "epochs": m["epochs"],
            "best_epoch": m["best_epoch"], "valid_ndcg@10": m["valid"]["ndcg@10"],
            "test_hr@10": m["test"]["hr@10"], "test_ndcg@10": m["test"]["ndcg@10"],
            "training": table(["epoch", "loss", "valid HR@10", "valid NDCG@10"], curve[-15:]),
            "model": dg.MetadataValue.path(str(files.path)),
        })

    return _asset


sasrec = _next_item_asset(
    "sasrec", "SASRec trained on the domain's train split, early-stopped on validation NDCG@10.")
gru4rec = _next_item_asset(
    "gru4rec", "GRU4Rec, the recurrent classic baseline, trained like SASRec on the same split.")
