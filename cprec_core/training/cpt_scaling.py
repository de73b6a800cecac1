"""The CPT scaling curve: what more behaviour-sequence tokens buy, from one run.

    python -m cprec_core.training.cpt_scaling --profile study-text

Warmup-Stable-Decay keeps the learning rate constant in its stable phase, so the decay can
start from any stable checkpoint (Hu et al., MiniCPM 2024; Hägele et al., 2024): one run
gives every point. The stable run walks the source domains' domain-specific blocks at the
WSA learning rate; at each budget (``scaling.fractions`` of ``scaling.tokens``) it branches:
a short annealing on mixed blocks (``scaling.anneal_share`` of the budget, cosine to
``cpt.min_lr_ratio``), whose adapter is that budget's point; then the stable run goes on
from the state it had before the branch. A budget counts the stable and the annealing
tokens the point's adapter has seen.

Each point's adapter embeds every item's title (cprec_core.embeddings.item_embeddings); a
text SASRec per target domain and seed (``sasrec.seeds``) reads the vectors, trained as the
study's ``sasrec_text_cpt``; its test HR@1 on the stored 20-candidate sets and NDCG@10 over
every item of the domain, against the CPT tokens, make the curve, with the base model's
embeddings as the zero-token point. Files under ``Layout.scaling_dir``: the stable run's
checkpoints (a killed run resumes at the last branch point it passed), ``points/<label>/``
(adapter, manifest, embeddings, SASRec models), ``curve.json`` and ``curve.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_wsd_schedule

from cprec_core.cli import (add_profile_arguments, add_reporter_argument, profile_from_args,
                            run_trainer)
from cprec_core.config import Profile
from cprec_core.embeddings.item_embeddings import EmbeddingError
from cprec_core.layout import ItemEmbeddingFiles, NextItemFiles, TrainedAdapter
from cprec_core.progress import Reporter, duration
from cprec_core.training import checkpointing
from cprec_core.training.cpt import CPTError, CPTTrainer, plan_fingerprint
from cprec_core.training.cpt_plan import (Corpus, CorpusError, Plan, concat_blocks, for_variant,
                                          read_corpus, split_steps)
from cprec_core.training.loop import fingerprint, one_step, publishing
from cprec_core.training.packing import pack_documents


def label(fraction: float) -> str:
    """``1/16`` as a folder name: ``1of16``; ``1`` as ``all``."""
    f = Fraction(fraction).limit_denominator(1024)
    return "all" if f == 1 else f"{f.numerator}of{f.denominator}"


def default_budget(domain_tokens: int, mixed_tokens: int, anneal_share: float,
                   max_tokens: int) -> int:
    """Without ``scaling.tokens``: ``cpt.max_tokens`` (the study's CPT budget), capped at
    the largest budget the corpus can feed (its domain-specific tokens for the stable share,
    its mixed tokens for the annealing share)."""
    fits = int(min(domain_tokens / (1 - anneal_share), mixed_tokens / anneal_share))
    return min(fits, max_tokens) if max_tokens else fits


def scaling_plan(corpus: Corpus, profile: Profile, pad_id: int) -> tuple[Plan, list[dict]]:
    """The stable run's steps (warmup and stable on domain-specific blocks, then every
    mixed block an annealing branch may read) and, per budget, its point: the stable step it
    branches at and how many annealing steps it takes."""
    cfg, scaling = profile.cpt, profile.scaling
    rng = np.random.default_rng(cfg.seed)
    domain = [x for x, k in zip(corpus.input_ids, corpus.kinds) if k == "domain"]
    mixed = [x for x, k in zip(corpus.input_ids, corpus.kinds) if k == "mixed"]
    if not domain or not mixed:
        raise CorpusError("the scaling curve needs domain-specific and mixed sequences")
    d_blocks = pack_documents([domain[i] for i in rng.permutation(len(domain))],
                              cfg.block_size, pad_id)
    m_blocks = pack_documents([mixed[i] for i in rng.permutation(len(mixed))],
                              cfg.block_size, pad_id)
    d_steps = split_steps(rng.permutation(len(d_blocks)), math.ceil(len(d_blocks) / cfg.blocks_per_step))
    m_steps = split_steps(len(d_blocks) + rng.permutation(len(m_blocks)),
                     math.ceil(len(m_blocks) / cfg.blocks_per_step))
    blocks = concat_blocks(d_blocks, m_blocks)
    d_tokens = np.cumsum([int(blocks.tokens[s].sum()) for s in d_steps])
    m_tokens = np.cumsum([int(blocks.tokens[s].sum()) for s in m_steps])
    budget = scaling.tokens or default_budget(int(d_tokens[-1]), int(m_tokens[-1]),
                                              scaling.anneal_share, cfg.max_tokens)
    points = []
    for fraction in sorted(scaling.fractions):
        stable_tokens = fraction * budget * (1 - scaling.anneal_share)
        anneal_tokens = fraction * budget * scaling.anneal_share
        at = int(np.searchsorted(d_tokens, stable_tokens)) + 1  # steps reaching the tokens
        n = int(np.searchsorted(m_tokens, anneal_tokens)) + 1
        if at > len(d_steps) or n > len(m_steps):
            raise CorpusError(
                f"budget {label(fraction)} of {budget:,} tokens needs {stable_tokens:,.0f}"
                f" domain-specific and {anneal_tokens:,.0f} mixed tokens; the corpus has"
                f" {int(d_tokens[-1]):,} and {int(m_tokens[-1]):,}: lower scaling.tokens")
        points.append({"fraction": fraction, "label": label(fraction), "budget": budget,
                       "stable_steps": at,
                       "anneal_steps": n,
                       "tokens": int(d_tokens[at - 1] + m_tokens[n - 1])})
    stable = points[-1]["stable_steps"]
    anneal = max(p["anneal_steps"] for p in points)
    warmup = min(max(1, round(cfg.warmup_ratio * (stable + points[-1]["anneal_steps"]))),
                 points[0]["stable_steps"])
    steps = d_steps[:stable] + m_steps[:anneal]
    plan = Plan(blocks, steps, ["domain"] * stable + ["mixed"] * anneal, warmup,
                stable - warmup, anneal)
    return plan, points


def stable_schedule(optimizer, warmup: int) -> LambdaLR:
    """Linear warmup, then the constant stable learning rate (WSD's first two phases)."""
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(warmup, 1)))


def point_rate(m: dict) -> float:
    """Tokens per second of the training that made a point (its stable stretch and branch)."""
    return (m["stable_tokens"] + m["anneal_tokens"]) / max(
        m["stable_seconds"] + m["anneal_seconds"], 1e-9)


def train_points(profile: Profile, reporter: Reporter, stop_after: int | None = None) -> list[dict]:
    """The stable run and its annealing branches; returns the points' manifests (those
    already trained are kept: the run resumes at the last branch point it passed)."""
    layout = profile.layout
    root = layout.scaling_dir
    trainer = CPTTrainer(profile, "wsa", reporter, run=TrainedAdapter(root / "stable"))
    corpus = for_variant(read_corpus(layout.corpus_parquet), "wsa")
    trainer.setup(corpus=corpus, resume=False)
    plan, points = scaling_plan(corpus, profile, trainer.tokenizer.eos_token_id)
    trainer.plan = plan
    plan_id = fingerprint([plan_fingerprint(corpus, profile.cpt, "scaling", profile.model.name),
                           dataclasses.asdict(profile.scaling)])
    trainer.scheduler = stable_schedule(trainer.optimizer, plan.warmup_steps)
    checkpoints = root / "checkpoints"
    found = checkpointing.load(
        checkpoints, plan_id,
        lambda c: checkpointing.restore(c, trainer.peft_model, trainer.optimizer,
                                        trainer.scheduler), reporter.log)
    step = 0 if found is None else found.step
    reporter.log(
        f"CPT scaling: {len(points)} budgets {', '.join(p['label'] for p in points)} of"
        f" {points[-1]['budget']:,} tokens; stable"
        f" run {plan.warmup_steps + plan.stable_steps} steps (warmup {plan.warmup_steps}),"
        f" branches of {', '.join(str(p['anneal_steps']) for p in points)} annealing steps;"
        f" starting at step {step}")
    first_anneal = plan.warmup_steps + plan.stable_steps
    lr = profile.cpt.lr
    done, started = 0, time.perf_counter()
    manifests = []
    stable_seconds, stable_tokens = 0.0, 0  # since the previous point (this process)
    for point in points:
        folder = TrainedAdapter(root / "points" / point["label"])
        if folder.exists() and folder.manifest.is_file() and step >= point["stable_steps"]:
            manifests.append(json.loads(folder.manifest.read_text()))
            continue
        while step < point["stable_steps"]:  # the stable run up to this budget
            t0 = time.perf_counter()
            loss = one_step(trainer, step, profile.cpt.grad_clip)["loss"]
            stable_seconds += time.perf_counter() - t0
            stable_tokens += plan.tokens(step)
            step += 1
            done += 1
            reporter.log(f"scaling stable step {step}/{first_anneal} lr"
                         f" {trainer.scheduler.get_last_lr()[0]:.2e} loss {loss:.4f}")
            if stop_after is not None and done >= stop_after:
                return manifests
        # keep the stable state, branch, and come back to it
        saved = checkpointing.read(checkpointing.save(
            checkpoints, step, {"plan": plan_id}, trainer.peft_model, trainer.optimizer,
            trainer.scheduler))
        stable_scheduler = trainer.scheduler
        trainer.scheduler = get_wsd_schedule(trainer.optimizer, num_warmup_steps=0,
                                             num_decay_steps=point["anneal_steps"],
                                             num_stable_steps=0, decay_type="cosine",
                                             min_lr_ratio=profile.cpt.min_lr_ratio)
        branch_started = time.perf_counter()
        losses = []
        for k in range(point["anneal_steps"]):
            losses.append(one_step(trainer, first_anneal + k, profile.cpt.grad_clip)["loss"])
            reporter.log(f"scaling {point['label']} anneal step {k + 1}/{point['anneal_steps']}"
                         f" loss {losses[-1]:.4f}")
        with publishing(folder.scratch, folder.adapter) as staged:
            trainer.peft_model.save_pretrained(staged)
        anneal_seconds = time.perf_counter() - branch_started
        anneal_tokens = sum(plan.tokens(first_anneal + k) for k in range(point["anneal_steps"]))
        manifest = {**point, "final_loss": round(losses[-1], 5) if losses else None,
                    "plan_fingerprint": f"{plan_id}-{point['label']}",
                    "stable_seconds": round(stable_seconds, 1), "stable_tokens": stable_tokens,
                    "anneal_seconds": round(anneal_seconds, 1), "anneal_tokens": anneal_tokens,
                    "minutes": round((stable_seconds + anneal_seconds) / 60, 1),
                    "base_model": profile.model.name, "lr": lr}
        stable_seconds, stable_tokens = 0.0, 0
        folder.manifest.write_text(json.dumps(manifest, indent=2))
        manifests.append(manifest)
        trainer.scheduler = stable_scheduler
        checkpointing.restore(saved, trainer.peft_model, trainer.optimizer, trainer.scheduler)
        reporter.log(f"scaling point {point['label']}: {point['tokens']:,} tokens, final loss"
                     f" {manifest['final_loss']}, {manifest['minutes']} min for this point"
                     f" ({point_rate(manifest):.0f} tokens/s),"
                     f" {duration(time.perf_counter() - started)} so far")
    return manifests


def _text_sasrec_scores(profile: Profile, con, slug: str, vectors, folder: Path,
                        log) -> dict:
    """A text SASRec per seed on ``slug`` reading ``vectors``; its test HR@1 on the stored
    candidate sets and NDCG@10 over the domain's items, per user the mean over seeds."""
    from cprec_core.data.cases import load_cases
    from cprec_core.data.domain_users import domain_for_slug, load_domain_data
    from cprec_core.evaluation.baselines import sequential_scores
    from cprec_core.metrics import ranks_from_scores
    from cprec_core.recommend.full_ranking import ndcg_at_k, sample_test_users
    from cprec_core.recommend.retrieval import (domain_items, exclude_history,
                                                sequential_full_scores)
    from cprec_core.training.next_item import (TextTable, load_next_item_model,
                                               train_next_item)

    domain, _ = domain_for_slug(con, slug)
    data = load_domain_data(con, slug)
    cases = load_cases(con, domain, "test")
    items = domain_items(con, domain)
    users, histories, targets = sample_test_users(con, domain)
    text = TextTable(vectors, profile.item_text.adapter_hidden, profile.item_text.text_only)
    hits, gains, seconds = [], [], []
    for seed in profile.sasrec.seeds:
        files = NextItemFiles(folder / slug / f"seed-{seed}")
        if not files.exists():
            train_next_item(data, profile.sasrec, files, log=lambda _: None, seed=seed,
                            text=text, name="sasrec_text (scaling)")
        manifest = json.loads(files.manifest.read_text())
        seconds.append(manifest["seconds"])
        model, index = load_next_item_model(files)
        ranks = ranks_from_scores(sequential_scores(model, index, cases, model.shape.max_len),
                                  cases.target_col)
        hits.append(ranks == 0)
        full = exclude_history(sequential_full_scores(files, items, histories), items, histories)
        gains.append(ndcg_at_k(ranks_from_scores(full, items.columns(targets))))
    return {"domain": domain, "seeds": len(hits), "cases": len(cases.users),
            "hr@1": float(np.mean(hits)), "ndcg@10": float(np.mean(gains)),
            "sasrec_seconds": round(float(np.mean(seconds)), 1),
            "hits": np.mean(hits, 0).tolist(), "gains": np.mean(gains, 0).tolist()}


def evaluate_points(profile: Profile, manifests: list[dict], log) -> dict:
    """The curve: the base model (0 tokens) and each point, per target domain."""
    from cprec_core.data.db import connect
    from cprec_core.embeddings.item_embeddings import embed_items, load_item_vectors

    layout = profile.layout
    root = layout.scaling_dir
    base = layout.item_embeddings("base")
    if not base.exists():
        embed_items(profile, "base", log=log)
    sources = [("base", 0, base, root / "points" / "base" / "sasrec")]
    for m in manifests:
        folder = root / "points" / m["label"]
        files = ItemEmbeddingFiles(folder / "embeddings")
        if not files.exists():
            embed_items(profile, "wsa", log=log, files=files,
                        adapter=TrainedAdapter(folder))
        sources.append((m["label"], m["tokens"], files, folder / "sasrec"))
    rows = []
    with connect(layout.database, read_only=True) as con:
        slugs = [r[0] for r in con.execute("SELECT slug FROM domains WHERE role = 'target'"
                                           " ORDER BY slug").fetchall()]
        for name, tokens, files, folder in sources:
            vectors = load_item_vectors(files)
            for slug in slugs:
                found = _text_sasrec_scores(profile, con, slug, vectors, folder, log)
                rows.append({"label": name, "tokens": tokens, **found})
                log(f"scaling {name} ({tokens:,} CPT tokens) {found['domain']}: HR@1"
                    f" {found['hr@1']:.3f}, NDCG@10 {found['ndcg@10']:.4f}"
                    f" ({found['seeds']} seeds)")
    minutes = {m["label"]: m.get("minutes") for m in manifests}
    for row in rows:
        row["train_minutes"] = minutes.get(row["label"], "")
    return {"points": rows}


def plot_curve(curve: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = sorted({r["domain"] for r in curve["points"]})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric, title in ((axes[0], "hr@1", "HR@1, 20 candidates"),
                              (axes[1], "ndcg@10", "NDCG@10, full ranking")):
        for domain in domains:
            rows = sorted((r for r in curve["points"] if r["domain"] == domain),
                          key=lambda r: r["tokens"])
            ax.plot([max(r["tokens"], 1) for r in rows], [r[metric] for r in rows], "o-",
                    label=domain)
        ax.set_xscale("symlog", linthresh=1e4)
        ax.set_xlabel("CPT tokens (0: base model)")
        ax.set_title(f"text SASRec, test {title}")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run(profile: Profile, reporter: Reporter | None = None,
        stop_after: int | None = None) -> dict:
    """Trains the points (resuming), evaluates them and writes the curve."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    manifests = train_points(profile, reporter, stop_after)
    if len(manifests) < len(profile.scaling.fractions):
        return {"finished": False, "points": len(manifests)}
    trained = time.perf_counter()
    curve = evaluate_points(profile, manifests, reporter.log)
    seconds = sum(m["stable_seconds"] + m["anneal_seconds"] for m in manifests)
    tokens = sum(m["stable_tokens"] + m["anneal_tokens"] for m in manifests)
    tokens_per_second = round(tokens / seconds, 1) if seconds else None
    curve.update({
        "description": (
            f"One WSA run of `{profile.model.name}`: warmup and stable on domain-specific"
            f" blocks, branching at {', '.join(m['label'] for m in manifests)} of"
            f" {manifests[-1]['budget']:,} tokens into an annealing on"
            f" mixed blocks of {profile.scaling.anneal_share:.0%} of each budget (cosine to"
            f" {profile.cpt.min_lr_ratio} x lr). Each point's adapter embeds every title; a"
            f" text SASRec per domain and seed ({len(profile.sasrec.seeds)}) reads them; every"
            " test user; per user the mean over seeds. Training the points took"
            f" {duration(trained - started)} (stable run and branches, resumed runs count"
            f" what this run did), embedding and SASRec {duration(time.perf_counter() - trained)}."),
        "points_trained": manifests, "tokens_per_second": tokens_per_second})
    layout = profile.layout
    layout.scaling_curve.write_text(json.dumps(curve, indent=1))
    plot_curve(curve, layout.scaling_plot)
    return {"finished": True, "points": len(manifests),
            "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description=__doc__.split("\n")[0])))
    parser.add_argument("--stop-after", type=int, help="stop after N stable steps (kill test)")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    return run_trainer(lambda reporter: run(profile, reporter, args.stop_after),
                       (CPTError, CorpusError, EmbeddingError), args.reporter)


if __name__ == "__main__":
    sys.exit(main())
