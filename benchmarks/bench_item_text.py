"""Benchmark: what LLM item embeddings cost, and the checks the text systems rest on.

    python benchmarks/bench_item_text.py [--profile demo] [--domain crime] [--seeds 3]

In one run, side by side:

* **Embedding every item** (cprec_core.embeddings.item_embeddings, the base model) in bf16
  and in fp32: seconds, items/s (the goal: every ML-100K item in under 60 s on the 2-core
  Zen 4). Model loading is timed apart.
* **Training** a text SASRec (``sasrec_text_base``'s settings) beside the ID-only SASRec on
  the same domain and seeds: seconds per model and per epoch (the goal: at most 2x).
* **Pooling**, measured once: the base model's titles mean-pooled against last-token pooled,
  each through a text SASRec over ``--seeds`` seeds: validation and test NDCG@10 (full
  ranking). LLM2Rec's base-model figures favour the mean by far.
* **The ablation that can fail**: the same text SASRec with the title vectors shuffled among
  the domain's items (every item keeps a vector, none its own). If the titles carry what the
  model uses, the shuffled arm falls back to (or below) the ID model.

Nothing of the profile is overwritten: embeddings and models go to a scratch folder under
``data/<profile>/bench_item_text/``. Needs the profile's corpus snapshot and ``domain_users``
(``make demo``, or its corpus and sasrec stages).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil

import numpy as np
import torch

from cprec_core.config import load_profile
from cprec_core.data.db import connect
from cprec_core.data.domain_users import load_domain_data
from cprec_core.embeddings.item_embeddings import embed_items, load_item_vectors
from cprec_core.layout import ItemEmbeddingFiles, NextItemFiles
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.next_item import TextTable, train_next_item


def arm(data, profile, folder, seeds, text: TextTable | None) -> dict:
    runs = [train_next_item(data, profile.sasrec, NextItemFiles(folder / f"seed-{s}"),
                            log=lambda _: None, seed=s, text=text) for s in seeds]
    return {"seconds": np.mean([r["seconds"] for r in runs]),
            "s/epoch": np.mean([r["seconds"] / r["epochs"] for r in runs]),
            "epochs": np.mean([r["epochs"] for r in runs]),
            "valid": np.mean([r["valid"]["ndcg@10"] for r in runs]),
            "test": np.mean([r["test"]["ndcg@10"] for r in runs]),
            "test_sd": np.std([r["test"]["ndcg@10"] for r in runs])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    profile = load_profile(args.profile)
    scratch = profile.layout.root / "bench_item_text"
    shutil.rmtree(scratch, ignore_errors=True)
    print(f"chip: {processor()}, {torch.get_num_threads()} threads; profile {profile.name},"
          f" model {profile.model.name}")

    rows, vectors = [], {}
    for dtype in ("bf16", "fp32"):
        p = dataclasses.replace(profile, item_text=dataclasses.replace(profile.item_text,
                                                                       dtype=dtype))
        for pooling in ("mean", "last") if dtype == "bf16" else ("mean",):
            files = ItemEmbeddingFiles(scratch / f"{dtype}-{pooling}")
            m = embed_items(p, "base", log=lambda _: None, pooling=pooling, files=files)
            vectors[(dtype, pooling)] = load_item_vectors(files)
            rows.append((dtype, pooling, m["items"], m["tokens"], m["load_seconds"],
                         m["seconds"], m["items_per_second"]))
    print("\nEmbedding every item with the base model (one forward per title, batched by"
          " length)")
    print(md_table(["dtype", "pooling", "items", "tokens", "model load s", "embed s",
                    "items/s"], rows))

    with connect(profile.layout.database, read_only=True) as con:
        data = load_domain_data(con, args.domain)
    seeds = list(range(args.seeds))
    settings = dict(adapter_hidden=profile.item_text.adapter_hidden,
                    text_only=profile.item_text.text_only)
    base = vectors[("bf16", "mean")]
    arms = {
        "SASRec (IDs)": None,
        "+ base text, mean pooling": TextTable(base, **settings),
        "+ base text, last-token pooling": TextTable(vectors[("bf16", "last")], **settings),
        "+ base text shuffled among items": TextTable(base.shuffled(data.items), **settings),
    }
    results = {name: arm(data, profile, scratch / f"sasrec-{k}", seeds, text)
               for k, (name, text) in enumerate(arms.items())}
    ids = results["SASRec (IDs)"]
    print(f"\nSASRec on {data.domain} ({len(data.items)} items, {len(data.histories)} users),"
          f" {len(seeds)} seeds each; NDCG@10 over every item of the domain (history"
          " excluded), mean over seeds; time per model and per epoch, and against the ID"
          " model")
    print(md_table(["arm", "seconds", "s/epoch", "epochs", "vs IDs (s/epoch)", "valid NDCG@10",
                    "test NDCG@10 (sd over seeds)"],
                   [(name, f"{r['seconds']:.1f}", f"{r['s/epoch']:.2f}", f"{r['epochs']:.1f}",
                     f"{r['s/epoch'] / ids['s/epoch']:.2f}x", f"{r['valid']:.4f}",
                     f"{r['test']:.4f} ({r['test_sd']:.4f})") for name, r in results.items()]))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
