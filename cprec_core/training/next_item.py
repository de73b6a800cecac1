"""Train one SASRec (or GRU4Rec) per domain on its train split, early-stopped on the
validation items.

    python -m cprec_core.training.next_item --profile demo --domain crime [--model gru4rec]

Inputs are the rows of ``domain_users`` (history of global item ids, valid item, test
item). Items are re-indexed per domain (1..N, 0 = padding); the item index maps them back.
Training sequences are each user's train history (last ``max_len`` items), predicting
every next item over every item, or over sampled negatives (the config's ``negatives``),
in random batches or, with ``length_buckets``, batches of like lengths cut to their
longest (``epoch_batches``, ``trim_padding``). Model selection: NDCG@10 of the validation
item ranked among all the domain's items not in the history (cprec_core.metrics, the
evaluation's tie rule). The files are a ``NextItemFiles`` of cprec_core.layout: weights,
item index and a manifest (model, shape, config, seed, metrics per epoch and of the best
epoch, time, peak memory); with ``refit`` the saved model is the same seed trained again
on train + validation for the chosen epochs (the manifest keeps the selected model's
scores beside it). SASRec and GRU4Rec share all of this; the config's type says which one
is trained. A text system (``sasrec_text_cpt``, ...) is the same model whose item table
also reads the LLM's title embeddings (``TextTable``, cprec_core.models.text_items),
trained the same way.

    python -m cprec_core.training.next_item --profile demo --domain crime --model sasrec_text_cpt
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from safetensors.torch import load_file, save_file

from cprec_core.config import GRU4RecConfig, Profile, SASRecConfig
from cprec_core.data.domain_users import DomainData, load_domain_data
from cprec_core.embeddings.item_embeddings import (EmbeddingError, ItemVectors,
                                                   load_item_vectors)
from cprec_core.layout import NextItemFiles
from cprec_core.metrics import rank_metrics
from cprec_core.models.gru4rec import GRU4Rec, GRU4RecShape
from cprec_core.models.sasrec import SASRec, SASRecShape, left_pad
from cprec_core import tracking
from cprec_core.tracking import NULL_TRACKER, NullTracker, numbers
from cprec_core.training.memory import PeakRSS
from cprec_core.progress import Throttled, counted, duration
from cprec_core.systems import (NEXT_ITEM_SYSTEM_NAMES, embedding_asset, next_item_systems,
                                system as registered)


def evaluate(model: SASRec | GRU4Rec, histories: list[list[int]], targets: list[int],
             max_len: int, batch_size: int = 512) -> dict[str, float]:
    """Full ranking over the domain's items, history items excluded."""
    model.eval()
    totals = {"hr@10": 0.0, "ndcg@10": 0.0}
    with torch.no_grad():
        for start in range(0, len(histories), batch_size):
            hist = histories[start:start + batch_size]
            scores = model.scores(left_pad(hist, max_len))
            # column j scores item j + 1: a leading column for the padding id 0 takes the
            # history's ids in one scatter, then goes
            seen = left_pad(hist, max(1, max(len(h) for h in hist)))
            scores = F.pad(scores, (1, 0)).scatter_(1, seen, -math.inf)[:, 1:]
            target = torch.tensor(targets[start:start + batch_size]) - 1
            part = rank_metrics(scores, target)
            for key in totals:
                totals[key] += part[key] * len(hist)
    return {key: round(value / max(len(histories), 1), 4) for key, value in totals.items()}


def _epoch_line(label: str, epoch: int, cfg: SASRecConfig | GRU4RecConfig, history: list[dict],
                waited: int, seconds: float, validation: float, per_epoch: float) -> str:
    """One epoch's report: loss, validation metrics, the best so far, patience and the
    epochs left (early stopping ends training after the patience left without a better
    epoch, ``max_epochs`` at the latest)."""
    row = history[-1]
    best = max(history, key=lambda r: r["ndcg@10"])
    line = (f"{label}: epoch {epoch}/{cfg.max_epochs} in {duration(seconds)} (validation"
            f" {duration(validation)}), loss {row['loss']:.4f}, valid NDCG@10"
            f" {row['ndcg@10']:.4f} HR@10 {row['hr@10']:.4f}, ")
    line += ("new best" if best is row else
             f"best NDCG@10 {best['ndcg@10']:.4f} at epoch {best['epoch']}")
    patience = cfg.patience - waited
    most = cfg.max_epochs - epoch
    if patience <= 0:
        return line + f"; no better epoch in {cfg.patience}: stopping early"
    if most == 0:
        return line + f", patience {patience}/{cfg.patience} left; last epoch (max_epochs)"
    least = min(patience, most)
    span = (f"{most} more epochs (about {duration(most * per_epoch)})" if least == most else
            f"{least} to {most} more epochs (about {duration(least * per_epoch)} to"
            f" {duration(most * per_epoch)})")
    return line + f", patience {patience}/{cfg.patience} left; {span}"


def epoch_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
                  buckets: bool = False) -> list[torch.Tensor]:
    """One epoch's batches of row indices: a random permutation cut in turn; with
    ``buckets``, rows ordered by history length plus a random jitter of a tenth of the
    longest (so batches differ between epochs), cut in turn, the batches then shuffled:
    a batch holds similar lengths and ``trim_padding`` cuts it to its longest."""
    order = torch.randperm(len(lengths), generator=generator)
    if not buckets:
        return list(order.split(batch_size))
    jitter = torch.rand(len(lengths), generator=generator) * max(1.0, int(lengths.max()) / 10)
    batches = list(torch.argsort(lengths.float() + jitter).split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def trim_padding(seqs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded rows without the columns that are padding in every row. The models count
    positions from the right edge (cprec_core.models.sasrec), so this changes the cost, not
    the result."""
    filled = (seqs != 0).any(0).nonzero()
    first = int(filled[0]) if len(filled) else seqs.shape[1] - 1
    return seqs[:, first:], targets[:, first:]


def _fresh_model(kind: str, local: dict, cfg, text: "TextTable | None", data: DomainData):
    """A new model of ``kind`` (its text table filled) and its Adam optimiser."""
    model = build_model(kind, len(local), cfg, text)
    if text is not None:
        model.text.set_text(text.vectors.rows(sorted(data.items)))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2),
                                 weight_decay=cfg.weight_decay)
    return model, optimizer


def _train_epoch(model, optimizer, seqs: torch.Tensor, targets: torch.Tensor, cfg,
                 generator: torch.Generator, throttled: Throttled, label: str) -> float:
    """One pass over the training sequences; the mean loss per sequence."""
    model.train()
    batches = epoch_batches((seqs != 0).sum(1), cfg.batch_size, generator, cfg.length_buckets)
    total, done, started = 0.0, 0, time.perf_counter()
    for batch, idx in enumerate(batches, 1):
        loss = model.loss(*trim_padding(seqs[idx], targets[idx]), cfg.negatives,
                          cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, done = total + loss.item() * len(idx), done + len(idx)
        if batch < len(batches):
            throttled(lambda: counted(label, batch, len(batches), "batches",
                                      time.perf_counter() - started, f", loss {total / done:.4f}",
                                      "left in this epoch"))
    return total / max(done, 1)


MODELS = {"sasrec": (SASRec, SASRecShape), "gru4rec": (GRU4Rec, GRU4RecShape)}
NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec"}


@dataclass(frozen=True)
class TextTable:
    """What a text system adds to its model: the LLM's title embeddings and the adapter's
    settings (cprec_core.config.ItemTextConfig)."""

    vectors: ItemVectors
    adapter_hidden: int = 256
    text_only: bool = False


def build_model(kind: str, n_items: int, cfg: SASRecConfig | GRU4RecConfig,
                text: TextTable | None = None) -> SASRec | GRU4Rec:
    """A fresh model of ``kind`` whose shape fields come from ``cfg`` (and ``text``)."""
    cls, shape_cls = MODELS[kind]
    fields = {f.name for f in dataclasses.fields(shape_cls)} - {"n_items"}
    shaped = {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)}
    if text is not None:
        shaped.update(text_dim=text.vectors.dim, text_hidden=text.adapter_hidden,
                      text_only=text.text_only)
    return cls(shape_cls(n_items=n_items, **shaped))


def model_kind(cfg: SASRecConfig | GRU4RecConfig) -> str:
    return "gru4rec" if isinstance(cfg, GRU4RecConfig) else "sasrec"


def train_next_item(data: DomainData, cfg: SASRecConfig | GRU4RecConfig, files: NextItemFiles,
                    log=print, every_s: float | None = None, seed: int | None = None,
                    text: TextTable | None = None, name: str | None = None,
                    tracker: NullTracker = NULL_TRACKER) -> dict:
    """The model ``cfg`` configures (SASRec, or GRU4Rec for a ``GRU4RecConfig``), trained
    with ``seed`` (default: the first of ``cfg.seeds``) and saved to ``files``; returns its
    manifest. With ``text``, the item table adds the adapted title embeddings (a text
    system; ``name`` labels it in the log).

    Progress goes to ``log`` at most every ``every_s`` seconds (cprec_core.progress.EVERY_S
    by default): within a long epoch its batches (loss so far, time left in the epoch), and
    after an epoch its loss, validation NDCG@10 and HR@10, the best so far, the patience
    left and the epochs left (at least the patience left, at most up to ``max_epochs``).
    The first epoch, an epoch that took longer than the interval and the last one are
    always reported. Each epoch's loss and validation metrics, and at the end the test
    metrics and the saved files, go to ``tracker`` (an MLflow run: ``train_system``)."""
    kind = model_kind(cfg)
    name = name or NAMES[kind]
    seed = cfg.seeds[0] if seed is None else seed
    if len(data.items) < 2 or not data.histories:
        raise ValueError(f"domain {data.domain!r} has {len(data.items)} items and"
                         f" {len(data.histories)} users: too little to train {name}")
    memory = PeakRSS().start()
    torch.manual_seed(seed)
    local = {item: i + 1 for i, item in enumerate(sorted(data.items))}
    hist = [[local[i] for i in h] for h in data.histories]
    train = [h for h in hist if len(h) >= 2]
    seqs = left_pad([h[:-1] for h in train], cfg.max_len)
    targets = left_pad([h[1:] for h in train], cfg.max_len)
    keep = [u for u, v in enumerate(data.valid) if v is not None]
    valid_hist, valid_target = [hist[u] for u in keep], [local[data.valid[u]] for u in keep]
    test_keep = [u for u, t in enumerate(data.test) if t is not None]
    test_hist = [hist[u] + [local[data.valid[u]]] for u in test_keep]
    test_target = [local[data.test[u]] for u in test_keep]

    model, optimizer = _fresh_model(kind, local, cfg, text, data)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, history, waited = -1.0, None, [], 0
    started = time.perf_counter()
    label = f"{name} {data.domain}" + (f" seed {seed}" if seed else "")
    n_batches = math.ceil(len(seqs) / cfg.batch_size)
    log(f"{label}: {len(seqs):,} training sequences ({n_batches:,}"
        f" {'batch' if n_batches == 1 else 'batches'} of {cfg.batch_size}), {len(local):,}"
        f" items, {len(valid_hist):,} validation users;"
        f" up to {cfg.max_epochs} epochs, early stop after {cfg.patience} without a better"
        f" validation NDCG@10" + ("; then refit on train + validation" if cfg.refit else ""))
    throttled = Throttled(log, every_s)
    for epoch in range(1, cfg.max_epochs + 1):
        epoch_started = time.perf_counter()
        loss = _train_epoch(model, optimizer, seqs, targets, cfg, generator, throttled,
                            f"{label} epoch {epoch}/{cfg.max_epochs}")
        validating = time.perf_counter()
        metrics = evaluate(model, valid_hist, valid_target, cfg.max_len)
        now = time.perf_counter()
        history.append({"epoch": epoch, "loss": round(loss, 4), **metrics})
        tracker.log_step(epoch, {"loss": loss, "seconds": now - epoch_started,
                                 **numbers(metrics, "valid/")})
        improved = metrics["ndcg@10"] > best
        if improved:
            best, waited = metrics["ndcg@10"], 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
        stop = waited >= cfg.patience or epoch == cfg.max_epochs
        throttled(lambda: _epoch_line(label, epoch, cfg, history, waited, now - epoch_started,
                                      now - validating, (now - started) / epoch),
                  force=epoch == 1 or stop or now - epoch_started >= throttled.every_s)
        if waited >= cfg.patience:
            break
    model.load_state_dict(best_state)
    best_epoch = max(history, key=lambda r: r["ndcg@10"])["epoch"]
    valid = evaluate(model, valid_hist, valid_target, cfg.max_len)
    test = evaluate(model, test_hist, test_target, cfg.max_len)
    refit = None
    if cfg.refit:
        # The validation item picked the epochs; now train the same seed on every item
        # before the test one for that many epochs: the training set HSTU's protocol uses
        # (docs/BENCHMARK.md). Its validation scores would be trained-on, so the
        # manifest's `valid` stays the selected model's.
        refit_started = time.perf_counter()
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        full = [h for h in test_hist if len(h) >= 2]
        full_seqs = left_pad([h[:-1] for h in full], cfg.max_len)
        full_targets = left_pad([h[1:] for h in full], cfg.max_len)
        model, optimizer = _fresh_model(kind, local, cfg, text, data)
        for epoch in range(1, best_epoch + 1):
            _train_epoch(model, optimizer, full_seqs, full_targets, cfg, generator, throttled,
                         f"{label} refit epoch {epoch}/{best_epoch}")
        refit = {"epochs": best_epoch, "sequences": len(full), "test_selected_model": test,
                 "seconds": round(time.perf_counter() - refit_started, 1)}
        test = evaluate(model, test_hist, test_target, cfg.max_len)
    manifest = {
        "model": kind, "domain": data.domain, "data_version": data.data_version,
        "shape": dataclasses.asdict(model.shape),
        "config": dataclasses.asdict(cfg), "seed": seed, "users": len(hist),
        "train_sequences": len(train),
        "item_embeddings": text.vectors.provenance() if text is not None else None,
        "epochs": len(history), "best_epoch": best_epoch, "valid": valid, "test": test,
        "refit": refit, "seconds": round(time.perf_counter() - started, 1),
        # the process's resident memory (MB) when training began and its peak during it
        "rss_start_mb": memory.start_mb, "peak_rss_mb": memory.peak_mb(),
        "parameters": sum(p.numel() for p in model.parameters()), "history": history,
        "mlflow_run_id": tracker.wait_open(),
    }
    # The weights file marks a finished model (NextItemFiles.exists): the old one goes first,
    # the new one is renamed into place last, so a crash never pairs weights with another
    # run's item index or manifest.
    files.path.mkdir(parents=True, exist_ok=True)
    files.weights.unlink(missing_ok=True)
    files.item_index.write_text(json.dumps(sorted(data.items)))
    files.manifest.write_text(json.dumps(manifest, indent=2))
    staged = files.weights.with_name(files.weights.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, staged)
    staged.replace(files.weights)
    if tracker is not NULL_TRACKER:
        from cprec_core.training.plots import epoch_curves  # matplotlib: only when tracked

        tracker.log_step(len(history), {**numbers(valid, "best/valid/"),
                                        **numbers(test, "test/"),
                                        "best_epoch": best_epoch})
        tracker.log_artifacts([files.manifest, files.item_index,
                               epoch_curves(history, files.curves, label)])
        tracker.finished()
    log(f"{label}: {manifest['epochs']} epochs (best {best_epoch}) in"
        f" {duration(manifest['seconds'])}, valid {manifest['valid']}, test {manifest['test']}")
    return manifest


def load_next_item_model(files: NextItemFiles) -> tuple[SASRec | GRU4Rec, list[int]]:
    """The trained model (SASRec, or GRU4Rec as its manifest says) and its item index
    (position j holds the global id of item j + 1)."""
    manifest = json.loads(files.manifest.read_text())
    cls, shape_cls = MODELS[manifest.get("model", "sasrec")]  # older manifests: SASRec
    model = cls(shape_cls(**manifest["shape"]))
    model.load_state_dict(load_file(files.weights))
    return model.eval(), json.loads(files.item_index.read_text())


def trained_next_item_models(profile: Profile, slug: str) -> list[tuple[str, int, NextItemFiles]]:
    """(system, seed, files) of every trained next-item model the profile plans for ``slug``:
    SASRec and GRU4Rec, then ``item_text.systems``, each for the seeds of its encoder's
    settings; what the evaluation scores and the two-stage pipeline may retrieve with."""
    found = []
    for entry in next_item_systems(("sasrec", "gru4rec", *profile.item_text.systems)):
        for seed in getattr(profile, entry.next_item).seeds:
            files = profile.layout.next_item_model(entry.name, slug, seed)
            if files.exists():
                found.append((entry.name, seed, files))
    return found


def train_system(profile: Profile, name: str, data: DomainData, slug: str, log=print,
                 every_s: float | None = None, tags: dict | None = None) -> list[dict]:
    """Every seed of next-item system ``name`` (cprec_core.systems: ``sasrec``,
    ``gru4rec`` or a text system) on ``slug``'s data, each seed an MLflow run (with
    ``tags`` besides its own: the Dagster run's); the manifests, seed by seed."""
    entry = registered(name)
    if not entry.next_item:
        raise ValueError(f"{name!r} is not a next-item system")
    cfg = getattr(profile, entry.next_item)
    text = None
    if entry.kind == "text":
        files = profile.layout.item_embeddings(entry.item_source)
        if not files.exists():
            raise EmbeddingError(f"{files.path}: no item embeddings of"
                                    f" {entry.item_source!r}; materialise"
                                    f" {embedding_asset(entry.item_source)}")
        vectors = load_item_vectors(files)
        if entry.shuffled_vectors:
            vectors = vectors.shuffled(data.items)
        text = TextTable(vectors, profile.item_text.adapter_hidden, profile.item_text.text_only)
    manifests = []
    for seed in cfg.seeds:
        params = tracking.run_params(profile, entry.next_item, dataclasses.asdict(cfg),
                                     data_version=data.data_version, seed=seed, device="cpu",
                                     system=name, domain=slug,
                                     item_embeddings=text.vectors.provenance() if text else None)
        with tracking.training_run(profile, name=f"{name} {slug} seed {seed}", params=params,
                                   tags={**tracking.run_tags(entry.next_item, system=name,
                                                             domain=slug, seed=seed,
                                                             profile=profile.name),
                                         **(tags or {})},
                                   log=log) as tracker:  # no checkpoints: each a new run
            manifests.append(train_next_item(
                data, cfg, profile.layout.next_item_model(name, slug, seed), log, every_s,
                seed=seed, text=text, name=name if entry.kind == "text" else None,
                tracker=tracker))
    return manifests


def main(argv: list[str] | None = None) -> int:
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
    from cprec_core.data.db import connect

    parser = add_profile_arguments(
        argparse.ArgumentParser(description="a next-item model (SASRec, GRU4Rec or a text"
                                            " system) for one domain, every seed"))
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    parser.add_argument("--model", choices=NEXT_ITEM_SYSTEM_NAMES, default="sasrec")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)

    def work() -> None:
        with connect(profile.layout.database, read_only=True) as con:
            data = load_domain_data(con, args.domain)
        train_system(profile, args.model, data, args.domain)

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
