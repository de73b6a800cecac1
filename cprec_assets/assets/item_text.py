"""LLM item embeddings, one asset per source of weights (cprec_core.systems.EMBEDDING_SOURCES):
the base model, and each CPT variant's adapter. Each embeds every item's title once
(cprec_core.embeddings.item_embeddings); the text systems (cprec_assets.assets.collab) read
them, so a re-trained CPT adapter marks its embeddings, and through them its text systems
and the evaluation, stale."""

import json

import dagster as dg

from cprec_assets.assets.data import cpt_corpus
from cprec_assets.launcher import TrainingLauncher
from cprec_assets.metadata import png, table
from cprec_assets.resources import ProfileResource
from cprec_assets.run_log import run_log
from cprec_assets.versions import code_version
from cprec_core.embeddings.item_embeddings import embed_items
from cprec_core.systems import EMBEDDING_SOURCES, cpt_variant, embedding_asset


def build_embedding_asset(source: str) -> dg.AssetsDefinition:
    upstream = cpt_corpus if source == "base" else cpt_variant(source).asset
    weights = "the base model" if source == "base" else f"the CPT adapter `{source}` merged"

    @dg.asset(name=embedding_asset(source), group_name="item_text", deps=[upstream],
              pool="train", kinds={"pytorch", "safetensors"}, tags={"source": source},
              code_version=code_version("1", "model", "item_text"),
              description=f"Every item's title embedded by {weights}: the last hidden layer"
                          " pooled over the title's tokens (item_text.pooling).")
    def _asset(context: dg.AssetExecutionContext, cprec: ProfileResource) -> dg.MaterializeResult:
        profile = cprec.profile
        m = embed_items(profile, source, log=run_log(context))
        return dg.MaterializeResult(data_version=dg.DataVersion(m["version"]), metadata={
            "items": m["items"], "dim": m["dim"], "pooling": m["pooling"],
            "model": m["model"], "adapter_fingerprint": m["fingerprint"],
            "cost": table(["items", "tokens", "seconds", "items/s", "load s", "dtype", "device",
                           "threads"],
                          [(m["items"], m["tokens"], m["seconds"], m["items_per_second"],
                            m["load_seconds"], m["dtype"], m["device"], m["threads"])]),
            "embeddings": dg.MetadataValue.path(str(profile.layout.item_embeddings(source).path)),
        })

    return _asset


embedding_assets = [build_embedding_asset(s) for s in EMBEDDING_SOURCES]


@dg.asset(group_name="item_text", deps=[cpt_corpus, "candidate_sets", embedding_asset("base")],
          pool="train", kinds={"pytorch"},
          code_version=code_version("1", "scaling", "model", "cpt", "item_text"))
def cpt_scaling_curve(context: dg.AssetExecutionContext, cprec: ProfileResource,
                      launcher: TrainingLauncher) -> dg.MaterializeResult:
    """The scaling curve: one WSA run branching into a short annealing at each token budget
    (``scaling.fractions``); each point's adapter embeds the titles and feeds a text SASRec
    per domain and seed; test HR@1 and full-ranking NDCG@10 against CPT tokens, the base
    model as the zero-token point (cprec_core.training.cpt_scaling)."""
    from cprec_assets.assets.train import accelerate_command  # the CPT launch, one process

    command = accelerate_command(cprec, "cprec_core.training.cpt_scaling", launcher=launcher)
    context.log.info(" ".join(command))
    reported = launcher.run(context=context, command=command).get_materialize_result().metadata or {}
    layout = cprec.profile.layout
    curve = json.loads(layout.scaling_curve.read_text())
    return dg.MaterializeResult(metadata={
        **reported, "description": curve["description"],
        "curve": table(["point", "CPT tokens", "domain", "seeds", "HR@1", "NDCG@10",
                        "CPT minutes"],
                       [(r["label"], r["tokens"], r["domain"], r["seeds"], round(r["hr@1"], 4),
                         round(r["ndcg@10"], 4), r["train_minutes"]) for r in curve["points"]]),
        "tokens_per_second": curve.get("tokens_per_second"),
        "plot": png(layout.scaling_plot, "scaling curve")})
