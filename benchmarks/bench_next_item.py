"""Benchmark: what the public benchmark's SASRec costs per epoch, and what its two cost
levers buy, side by side in one run.

    python benchmarks/bench_next_item.py [--profile ml1m-bench] [--batches 12]

Arms (``ml1m-bench``'s SASRec: d 50, 2 original blocks, sampled softmax over 128
negatives, history 200), each timed over ``--batches`` training steps on the profile's own
train sequences, the first two steps not counted:

* **baseline**: HSTU's recipe as written: negatives drawn for every position, random
  batches at full width (200 columns);
* **shared draw**: the 128 negatives drawn once per sequence and shared by its positions
  (cprec_core.models.next_item.NextItemModel.loss);
* **shared draw + length buckets**: batches of similar history lengths, each cut to its
  longest (cprec_core.training.next_item.epoch_batches, trim_padding), as ml1m-bench trains.

Printed: seconds per step, the epoch's projected seconds (the profile's batches per epoch),
the speed-up over the baseline, and the loss after the timed steps (a sanity check that
each arm trains, not a quality comparison). Needs the profile's ``domain_users`` (`make
benchmark`'s corpus and sasrec stages, or the ml1m-bench corpus stage plus the domain
asset).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from cprec_core.config import load_profile
from cprec_core.data.db import connect
from cprec_core.data.domain_users import load_domain_data
from cprec_core.models.sasrec import left_pad
from cprec_core.provenance import processor
from cprec_core.reporting import md_table
from cprec_core.training.next_item import build_model, epoch_batches, trim_padding


def per_position_loss(model, seq: torch.Tensor, targets: torch.Tensor, negatives: int,
                      temperature: float) -> torch.Tensor:
    """HSTU's sampled softmax as written: ``negatives`` uniform draws for every position."""
    hidden = model._scored(model(seq))
    table = model._scored(model.item_table())
    real = targets > 0
    hidden, positive = hidden[real], targets[real]
    drawn = torch.randint(1, table.shape[0], (len(positive), negatives))
    logits = torch.cat([(hidden * table[positive]).sum(-1, keepdim=True),
                        torch.einsum("mh,mkh->mk", hidden, table[drawn])], 1) / temperature
    logits[:, 1:] = logits[:, 1:].masked_fill(drawn == positive[:, None], -5e4)
    return F.cross_entropy(logits, torch.zeros(len(positive), dtype=torch.long))


def time_arm(label: str, seqs, targets, cfg, n_items: int, steps: int, shared: bool,
             buckets: bool) -> dict:
    torch.manual_seed(0)
    model = build_model("sasrec", n_items, cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.beta2))
    generator = torch.Generator().manual_seed(0)
    batches = epoch_batches((seqs != 0).sum(1), cfg.batch_size, generator, buckets)
    times, loss = [], float("nan")
    for idx in batches[:steps]:
        started = time.perf_counter()
        seq, tgt = (trim_padding(seqs[idx], targets[idx]) if buckets else
                    (seqs[idx], targets[idx]))
        if shared:
            out = model.loss(seq, tgt, cfg.negatives, cfg.temperature)
        else:
            out = per_position_loss(model, seq, tgt, cfg.negatives, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        out.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
        loss = float(out.detach())
    per_step = sum(times[2:]) / max(len(times) - 2, 1)
    return {"arm": label, "per_step": per_step, "epoch": per_step * len(batches), "loss": loss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="ml1m-bench")
    parser.add_argument("--domain", default="", help="partition key (default: the only target)")
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    cfg = profile.sasrec
    with connect(profile.layout.database, read_only=True) as con:
        slug = args.domain or con.execute(
            "SELECT slug FROM domains WHERE role = 'target' ORDER BY slug").fetchone()[0]
        data = load_domain_data(con, slug)
    local = {item: i + 1 for i, item in enumerate(sorted(data.items))}
    train = [[local[i] for i in h] for h in data.histories if len(h) >= 2]
    seqs = left_pad([h[:-1] for h in train], cfg.max_len)
    targets = left_pad([h[1:] for h in train], cfg.max_len)
    arms = [time_arm("baseline: a draw per position, full width", seqs, targets, cfg,
                     len(local), args.batches, shared=False, buckets=False),
            time_arm("shared draw per sequence", seqs, targets, cfg, len(local),
                     args.batches, shared=True, buckets=False),
            time_arm("shared draw + length buckets (ml1m-bench)", seqs, targets, cfg,
                     len(local), args.batches, shared=True, buckets=True)]
    base = arms[0]["per_step"]
    print(f"{profile.name} {slug}: {len(train):,} sequences, {len(local):,} items, history"
          f" {cfg.max_len}, batch {cfg.batch_size}, {cfg.negatives} negatives;"
          f" {processor()}, {torch.get_num_threads()} threads; {args.batches} steps per arm"
          " (the first two not timed)")
    print(md_table(["arm", "s per step", "epoch s (projected)", "speed-up", "loss after"],
                   [(a["arm"], f"{a['per_step']:.3f}", f"{a['epoch']:.1f}",
                     f"{base / a['per_step']:.2f}x", f"{a['loss']:.3f}") for a in arms]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
