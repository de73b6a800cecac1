"""LLM item embeddings, one asset per source of weights (cprec_core.systems.EMBEDDING_SOURCES):
the base model, and each CPT variant's adapter. Each embeds every item's title once
(cprec_core.embeddings.item_embeddings); the text systems (cprec_assets.assets.collab) read
them, so a re-trained CPT adapter marks its embeddings, and through them its text systems
and the evaluation, stale."""

import dagster as dg

from cprec_assets.assets.data import cpt_corpus
from cprec_assets.metadata import table
from cprec_assets.resources import ProfileResource
from cprec_assets.run_log import run_log
from cprec_core.embeddings.item_embeddings import embed_items
from cprec_core.systems import EMBEDDING_SOURCES, cpt_variant, embedding_asset


def build_embedding_asset(source: str) -> dg.AssetsDefinition:
    upstream = cpt_corpus if source == "base" else cpt_variant(source).asset
    weights = "the base model" if source == "base" else f"the CPT adapter `{source}` merged"

    @dg.asset(name=embedding_asset(source), group_name="item_text", deps=[upstream],
              pool="train", kinds={"pytorch", "safetensors"}, tags={"source": source},
              code_version="1",
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
