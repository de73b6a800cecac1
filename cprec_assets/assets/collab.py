"""Per-domain collaborative models: SASRec (a classic baseline and LLaRA's item encoder) and
GRU4Rec (a classic baseline)."""

import hashlib
import json

import dagster as dg

from cprec_assets.assets.data import domain_users
from cprec_assets.automation import TRAIN
from cprec_assets.partitions import domain_partitions
from cprec_assets.resources import CPRecConfig
from cprec_core.training.next_item import train_gru4rec, train_sasrec
from cprec_core.data.domain_users import load_domain_data
from cprec_core.reporting import md_table


def _collab_result(m: dict, out) -> dg.MaterializeResult:
    """Metadata of a trained next-item model (SASRec or GRU4Rec) and its data version."""
    curve = [(r["epoch"], r["loss"], r["hr@10"], r["ndcg@10"]) for r in m["history"]]
    version = hashlib.sha256(json.dumps([m["data_version"], m["config"], m["shape"]]).encode())
    return dg.MaterializeResult(data_version=dg.DataVersion(version.hexdigest()[:16]), metadata={
        "domain": m["domain"],
        "data_version": m["data_version"],  # of domain_users[domain]: the data it saw
        "users": m["users"],
        "items": m["shape"]["n_items"],
        "epochs": m["epochs"],
        "best_epoch": m["best_epoch"],
        "valid_ndcg@10": m["valid"]["ndcg@10"],
        "test_hr@10": m["test"]["hr@10"],
        "test_ndcg@10": m["test"]["ndcg@10"],
        "training": dg.MetadataValue.md(md_table(
            ["epoch", "loss", "valid HR@10", "valid NDCG@10"], curve[-15:])),
        "model": dg.MetadataValue.path(str(out)),
    })


@dg.asset(group_name="collab", kinds={"pytorch"}, deps=[domain_users],
          partitions_def=domain_partitions, pool="train", code_version="1",
          automation_condition=TRAIN)
def sasrec(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """SASRec trained on the domain's train split, early-stopped on validation NDCG@10."""
    profile = cprec.load()
    with cprec.connect(read_only=True) as con:  # in pool `train`: waits for a writer
        data = load_domain_data(con, context.partition_key)
    out = profile.domain_dir("sasrec", context.partition_key)
    return _collab_result(train_sasrec(data, profile.sasrec, out, log=context.log.info), out)


@dg.asset(group_name="collab", kinds={"pytorch"}, deps=[domain_users],
          partitions_def=domain_partitions, pool="train", code_version="1",
          automation_condition=TRAIN)
def gru4rec(context: dg.AssetExecutionContext, cprec: CPRecConfig) -> dg.MaterializeResult:
    """GRU4Rec, the recurrent classic baseline, trained like SASRec on the same split."""
    profile = cprec.load()
    with cprec.connect(read_only=True) as con:
        data = load_domain_data(con, context.partition_key)
    out = profile.domain_dir("gru4rec", context.partition_key)
    return _collab_result(train_gru4rec(data, profile.gru4rec, out, log=context.log.info), out)
