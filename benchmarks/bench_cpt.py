"""Benchmark: one CPT training step, our packed bf16 trainer vs a plain Hugging Face Trainer.

What it measures
----------------
Both implementations train LoRA adapters on the same documents of the CPT corpus snapshot
(``<data-dir>/demo/corpus/cpt_corpus.parquet``) with the same base model (default
``smollm2-135m``) and the same LoRA settings (the profile's ``cpt.lora``: r=8, alpha=32,
dropout 0.1 on q, k, v, o, gate, up and down projections).

The slice: about ``--tokens`` tokens of the snapshot, both kinds. Each kind gets its share of
the budget in proportion to its share of the corpus tokens and contributes its first
documents by ``doc_id`` (domain-specific documents come first in the snapshot, so "the first
N documents" overall would hold no mixed ones).

* ``ours``: the real trainer, ``cprec_core.training.cpt.CPTTrainer``: ``setup(corpus=<the slice>,
  resume=False)`` into a scratch output folder, then ``train_step`` per optimiser step (the
  method ``CPTTrainer.train`` calls): the plan over the slice (``--variant``, default
  ``ds_mix_shuffled``; ``block_size`` 512, 8 blocks per step, micro-batches of 4 blocks),
  bf16 base weights where the CPU has AMX / AVX512-BF16, fp32 LoRA weights under bf16
  autocast, LoRA dropout as configured (``cprec_core.models.lora``), chunked cross-entropy,
  AdamW + the WSD schedule. When the slice has fewer plan steps than ``1 + --steps``, the
  plan is reused from its start.
* ``baseline``: ``transformers.Trainer`` with fp32 weights, LoRA via ``peft`` with the same
  settings, one row per document, padded to the longest document of its batch (labels -100
  on padding; the model shifts them), ``--baseline-batch`` documents per micro-batch
  (default 8, about the 2,048 positions of one of our micro-batches) and gradient
  accumulation chosen so that the real tokens per optimiser step are close to ours
  (``--baseline-accum``, default auto). ``report_to=[]``, no saving, no logging,
  ``dataloader_num_workers=0``, learning rate / weight decay / clipping from the profile,
  other arguments left at their defaults (``adamw_torch_fused``).
* ``matmul``: ``torch.matmul`` of square n x n matrices (n = 2048 and 4096) in bf16 and
  fp32, repeated for about a second each after two warm-up products; the best TFLOP/s per
  dtype (2 n^3 FLOPs per product) is this machine's measured peak.

Timing. Every implementation runs ``1 + --steps`` optimiser steps; the first one (kernel
set-up, allocator warm-up) is not timed. ``ours``: wall time of each step (perf_counter
around ``train_step``, as ``CPTTrainer.train`` logs it). ``baseline``: a ``TrainerCallback``
timestamps ``on_step_end``; the timed span runs from the end of the warm-up step to the end
of the last step (so data loading and collation are included, as they are for ours). Tokens are real
tokens only (no padding, no block tail): the tokens of the documents in those steps, counted
from the plan's blocks (ours) and from the attention masks a ``Trainer.training_step``
override sees (baseline). ``fill`` is real tokens / positions computed: the block fill of the
plan (ours) and the padding fill of the timed batches (baseline).

Memory. Each implementation runs in a child process of its own (this script with the hidden
``--worker`` flag); ``peak_rss_mb`` is its ``ru_maxrss`` from ``os.wait4`` on that child alone
(interpreter, libraries and model included), ``rss_before_train_mb`` the same counter once the
model, data and optimiser are ready. The parent imports no torch, so forked children do not
inherit a large ``ru_maxrss``. Preparation (corpus snapshot, model checkpoint, slice) runs in
its own child and is not timed.

FLOPs per token (model FLOPs, the work a LoRA step needs; recomputation, padding and masked
attention positions are not counted)::

    F = 4 N_body n + 4 N_head (n - 1) + 6 N_lora n + 6 L A n (n + 1)      per document of n tokens

* ``N_body``: weights of every ``nn.Linear`` of the frozen base except the LM head (q, k, v, o,
  gate, up, down of every layer); ``N_head``: the LM head (d x vocab; SmolLM2 ties it to the
  embedding: 576 x 49,152). A frozen matrix costs 2 FLOPs per weight and token forward and 2
  more backward for the input gradient; it needs no weight gradient. The head runs only on
  the n - 1 positions that have a next token.
* ``N_lora``: the LoRA parameters (r (in + out) per adapted projection): 2 forward, 2 for the
  input gradient, 2 for the weight gradients, per parameter and token.
* attention: causal, within the document: query t attends to t keys (t = 1..n), i.e.
  n (n + 1) / 2 pairs per layer; per pair Q K^T and P V cost 2 A each forward (A =
  heads x head_dim, 576 for SmolLM2, whatever the number of key/value heads) and backward
  twice that (dQ, dK, dP, dV): 12 A per pair and layer, L layers.
* not counted: the embedding lookup, norms, RoPE, softmax, SiLU, dropout, the optimiser,
  and the logits our chunked cross-entropy recomputes in backward. Autograd also skips the
  input gradient of layer 0's q/k/v (nothing before it needs one); F keeps it (< 0.5 %).

The FLOPs per token reported is F summed over the slice's documents / their tokens. MFU =
tokens/s x FLOPs per token / measured bf16 matmul peak. For reference the script also prints
the classic ``6 N`` estimate (N = all parameters of the base model, tied embedding counted
once), which assumes full fine-tuning (weight gradients for every matrix) and no attention.

Run (from the repository root)::

    .venv/bin/python benchmarks/bench_cpt.py [--data-dir data] [--tokens 16384] [--steps 4]
                                             [--model smollm2-135m] [--threads <cores>]

A fresh checkout first builds the demo corpus snapshot (``python -m cprec_core.data.build``,
about 10 s) and dequantises the model (``load_base_model``, about 15 s). ``--model`` must
share the tokenizer the snapshot was built with (the demo profile's: SmolLM2). Prints one
JSON line per implementation (prefixed ``BENCH``) and a side-by-side table.

Use a quiet machine: when another process keeps a core busy, ``--threads`` equal to the core
count makes torch's OpenMP threads wait on each other and every figure drops several-fold
(``--threads 1`` is the robust choice on a shared machine). The matmul peak is measured in
the same conditions, so a contended peak is low and the MFU high.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from childproc import run_child, self_peak_rss_mb  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # cprec_core is not installed: import it from the tree

PROFILE = "demo"
KINDS = ("domain", "mixed")
MATMUL_SIZES = (2048, 4096)




def bench_profile(args: argparse.Namespace):
    """The demo profile on ``--data-dir`` with ``--model`` as the base model."""
    from cprec_core.config import load_profile

    profile = load_profile(PROFILE)
    return dataclasses.replace(profile, data_dir=str(args.data_dir),
                               model=dataclasses.replace(profile.model, name=args.model))


def bench_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) / "bench"


def slice_file(args: argparse.Namespace) -> Path:
    return bench_dir(args) / f"cpt-slice-{args.tokens}.json"


# ---------------------------------------------------------------------------------------
# Preparation (worker "prepare", not timed).

def choose_slice(doc_ids: list[int], kinds: list[str], n_tokens: list[int],
                 budget: int) -> list[int]:
    """Per kind, its first documents by doc_id up to its share of ``budget`` tokens."""
    total = sum(n_tokens)
    chosen = []
    for kind in KINDS:
        rows = sorted((d, n) for d, k, n in zip(doc_ids, kinds, n_tokens) if k == kind)
        if not rows:
            continue
        share = budget * sum(n for _, n in rows) / total
        taken = 0
        for doc_id, n in rows:
            if taken and taken + n > share:
                break
            chosen.append(doc_id)
            taken += n
    return sorted(chosen)


def prepare(args: argparse.Namespace) -> dict:
    """Corpus snapshot and model checkpoint (built if missing), the slice and its plan."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from cprec_core.models.loader import model_path
    from cprec_core.training.cpt_plan import build_plan

    profile = bench_profile(args)
    corpus_file = profile.layout.corpus_parquet
    if not corpus_file.is_file():
        print(f"building the corpus snapshot into {profile.layout.corpus_dir} ...", flush=True)
        subprocess.run([sys.executable, "-m", "cprec_core.data.build", "--profile", PROFILE,
                        "--data-dir", str(args.data_dir)], cwd=REPO_ROOT, check=True)
    tokenizer = AutoTokenizer.from_pretrained(profile.layout.tokenizer_dir)
    path = model_path(profile.model.name, profile.layout.cache_dir, tokenizer)  # dequantises once

    cols = pq.read_table(corpus_file, columns=["doc_id", "kind", "n_tokens"]).to_pydict()
    chosen = choose_slice(cols["doc_id"], cols["kind"], cols["n_tokens"], args.tokens)
    corpus = read_slice(corpus_file, chosen)
    plan = build_plan(corpus, profile.cpt, args.variant, tokenizer.eos_token_id)
    lengths = [len(x) for x in corpus.input_ids]
    info = {
        "doc_ids": chosen,
        "lengths": lengths,
        "documents": {k: sum(1 for x in corpus.kinds if x == k) for k in KINDS},
        "tokens": sum(lengths),
        "corpus_documents": len(cols["doc_id"]),
        "model_path": str(path),
        "plan_blocks": len(plan.blocks),
        "plan_steps": plan.total_steps,
        "plan_fill": plan.blocks.fill,
        "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
    }
    slice_file(args).write_text(json.dumps(info))
    return {k: v for k, v in info.items() if k not in ("doc_ids", "lengths")}


def read_slice(corpus_file: Path, doc_ids: list[int]):
    """The documents ``doc_ids`` of the snapshot as a ``cprec_core.training.cpt_plan.Corpus``."""
    import pyarrow.parquet as pq

    from cprec_core.training.cpt_plan import Corpus, read_corpus

    corpus = read_corpus(corpus_file)  # rows in snapshot order; doc_id is not among its fields
    row_of = {d: i for i, d in enumerate(pq.read_table(corpus_file, columns=["doc_id"])
                                          .column("doc_id").to_pylist())}
    rows = [row_of[d] for d in doc_ids]
    return Corpus([corpus.kinds[i] for i in rows], [corpus.domains[i] for i in rows],
                  [corpus.item_idxs[i] for i in rows], [corpus.input_ids[i] for i in rows],
                  f"{corpus.fingerprint}-bench{len(rows)}")


def model_structure(peft_model) -> dict:
    """Matmul weights of the frozen base (body / LM head), LoRA and total parameters."""
    from torch import nn

    base = peft_model.get_base_model()
    head = base.get_output_embeddings()
    body = 0
    for name, module in base.named_modules():
        if isinstance(module, nn.Linear) and "lora_" not in name and module is not head:
            body += module.in_features * module.out_features
    config = base.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "n_body": body,
        "n_head": head.in_features * head.out_features,
        "n_lora": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "n_total": sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n),
        "layers": config.num_hidden_layers,
        "attn_width": heads * head_dim,
    }


# ---------------------------------------------------------------------------------------
# Worker "ours": the CPTTrainer step path.

def run_ours(args: argparse.Namespace, info: dict) -> dict:
    """The real trainer: CPTTrainer.setup on the slice, then CPTTrainer.train_step."""
    import tempfile

    import torch

    from cprec_core.layout import TrainedAdapter
    from cprec_core.training.cpt import CPTTrainer
    from cprec_core.training.loop import one_step

    torch.set_num_threads(args.threads)
    profile = bench_profile(args)
    cfg = profile.cpt
    corpus = read_slice(profile.layout.corpus_parquet, info["doc_ids"])
    trainer = CPTTrainer(profile, args.variant,
                         run=TrainedAdapter(Path(tempfile.mkdtemp(prefix="bench-cpt-"))))
    trainer.setup(corpus=corpus, resume=False)
    plan, blocks, dtype = trainer.plan, trainer.plan.blocks, trainer.dtype
    structure = model_structure(trainer.peft_model)
    trainer.model.train()
    def train_step(step: int) -> float:  # what CPTTrainer.train runs per step
        return one_step(trainer, step, trainer.cfg.grad_clip)["loss"]

    rss_before = self_peak_rss_mb()
    steps = []
    for i in range(1 + args.steps):
        step = i % plan.total_steps
        t0 = time.perf_counter()
        loss = train_step(step)
        seconds = time.perf_counter() - t0
        steps.append({"plan_step": step, "tokens": plan.tokens(step),
                      "positions": int(blocks.input_ids[plan.steps[step]].size),
                      "seconds": seconds, "loss": loss})
        print(f"  ours step {i}: {steps[-1]['tokens']} tokens in {seconds:.2f} s,"
              f" loss {loss:.4f}{' (warm-up, not timed)' if i == 0 else ''}", flush=True)
    timed = steps[1:]
    tokens = sum(s["tokens"] for s in timed)
    seconds = sum(s["seconds"] for s in timed)
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "timed_steps": len(timed),
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "tokens_per_step": round(tokens / len(timed), 1),
        "fill": round(blocks.fill, 4),
        "timed_fill": round(tokens / sum(s["positions"] for s in timed), 4),
        "first_step_s": round(steps[0]["seconds"], 3),
        "step_seconds": [round(s["seconds"], 3) for s in timed],
        "first_loss": round(steps[0]["loss"], 4),
        "last_loss": round(steps[-1]["loss"], 4),
        "rss_before_train_mb": rss_before,
        "plan": {"variant": args.variant, "blocks": len(blocks), "steps": plan.total_steps,
                 "block_size": cfg.block_size, "blocks_per_step": cfg.blocks_per_step,
                 "micro_batch": cfg.micro_batch, "reused": 1 + args.steps > plan.total_steps},
        "structure": structure,
    }


# ---------------------------------------------------------------------------------------
# Worker "baseline": Hugging Face Trainer, fp32, padded rows.

def run_baseline(args: argparse.Namespace, info: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(args.threads)
    profile = bench_profile(args)
    cfg = profile.cpt
    corpus = read_slice(profile.layout.corpus_parquet, info["doc_ids"])
    pad_id = info["pad_id"]
    dataset = [{"input_ids": x.tolist()} for x in corpus.input_ids]
    if len(dataset) < args.baseline_batch:
        raise SystemExit(f"the slice has {len(dataset)} documents, fewer than --baseline-batch"
                         f" {args.baseline_batch}: raise --tokens")

    def collate(rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, :len(r["input_ids"])] = 1
        return {"input_ids": input_ids, "attention_mask": mask,
                "labels": input_ids.masked_fill(mask == 0, -100)}

    model = AutoModelForCausalLM.from_pretrained(info["model_path"], dtype=torch.float32)
    lora = cfg.lora
    model = get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    structure = model_structure(model)

    class CountingTrainer(Trainer):
        """Counts the real tokens and padded positions of every micro-batch it trains on."""
        real_tokens = 0
        positions = 0
        step_loss = 0.0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.real_tokens += int(inputs["attention_mask"].sum())
            self.positions += inputs["attention_mask"].numel()
            loss = super().training_step(model, inputs, num_items_in_batch)
            self.step_loss += float(loss)  # what Trainer adds to its logged loss
            return loss

    marks: list[dict] = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, args_, state, control, **kwargs):
            marks.append({"t": time.perf_counter(), "tokens": 0, "positions": 0, "loss": 0.0})

        def on_step_end(self, args_, state, control, **kwargs):
            marks.append({"t": time.perf_counter(), "tokens": trainer.real_tokens,
                          "positions": trainer.positions, "loss": trainer.step_loss})
            trainer.step_loss = 0.0
            i = len(marks) - 2
            print(f"  baseline step {i}: {marks[-1]['tokens'] - marks[-2]['tokens']} tokens in"
                  f" {marks[-1]['t'] - marks[-2]['t']:.2f} s, loss {marks[-1]['loss']:.4f}"
                  f"{' (warm-up, not timed)' if i == 0 else ''}", flush=True)

    training_args = TrainingArguments(
        output_dir=str(bench_dir(args) / "cpt-baseline"),
        per_device_train_batch_size=args.baseline_batch,
        gradient_accumulation_steps=args.baseline_accum,
        max_steps=1 + args.steps,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip,
        seed=cfg.seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_drop_last=True,  # every micro-batch holds --baseline-batch documents
        remove_unused_columns=False,
    )
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=dataset,
                              data_collator=collate, callbacks=[StepClock()])
    rss_before = self_peak_rss_mb()
    trainer.train()
    first, last = marks[1], marks[-1]
    tokens = last["tokens"] - first["tokens"]
    seconds = last["t"] - first["t"]
    timed_steps = len(marks) - 2
    return {
        "dtype": "float32",
        "timed_steps": timed_steps,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1),
        "tokens_per_step": round(tokens / timed_steps, 1),
        "fill": round(tokens / (last["positions"] - first["positions"]), 4),
        "first_step_s": round(first["t"] - marks[0]["t"], 3),
        "step_seconds": [round(b["t"] - a["t"], 3) for a, b in zip(marks[1:], marks[2:])],
        "first_loss": round(first["loss"], 4),
        "last_loss": round(last["loss"], 4),
        "rss_before_train_mb": rss_before,
        "batch": {"docs_per_micro_batch": args.baseline_batch,
                  "gradient_accumulation": args.baseline_accum,
                  "optim": str(training_args.optim)},
        "structure": structure,
    }


# ---------------------------------------------------------------------------------------
# Worker "matmul": this machine's measured matmul peak.

def run_matmul(args: argparse.Namespace, info: dict) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        best = {}
        for n in MATMUL_SIZES:
            a = torch.randn(n, n).to(dtype)
            b = torch.randn(n, n).to(dtype)
            c = torch.empty(n, n, dtype=dtype)
            for _ in range(2):
                torch.matmul(a, b, out=c)
            reps, start = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - start < 1.0:
                torch.matmul(a, b, out=c)
                reps += 1
            seconds = time.perf_counter() - start
            tflops = 2 * n ** 3 * reps / seconds / 1e12
            best[str(n)] = round(tflops, 4)
        out[f"{name}_tflops"] = max(best.values())
        out[f"{name}_by_size"] = best
    return out


WORKERS = {"prepare": prepare, "ours": run_ours, "baseline": run_baseline,
           "matmul": run_matmul}


def run_worker(args: argparse.Namespace) -> None:
    if args.worker == "prepare":
        result = prepare(args)
    else:
        result = WORKERS[args.worker](args, json.loads(slice_file(args).read_text()))
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------
# Parent side: one child per job, peak memory from wait4.

def spawn_worker(args: argparse.Namespace, worker: str) -> tuple[dict, float]:
    result_file = bench_dir(args) / f".result-cpt-{worker}-{os.getpid()}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker,
           "--result", str(result_file), "--data-dir", str(args.data_dir),
           "--tokens", str(args.tokens), "--steps", str(args.steps), "--model", args.model,
           "--threads", str(args.threads), "--variant", args.variant,
           "--baseline-batch", str(args.baseline_batch),
           "--baseline-accum", str(args.baseline_accum)]
    return run_child(cmd, result_file, repr(worker))


def flops_per_token(structure: dict, lengths: list[int]) -> dict:
    """Model FLOPs of one LoRA training step per real token (formula in the docstring)."""
    s = structure
    linear = lora = attention = 0
    for n in lengths:
        linear += 4 * s["n_body"] * n + 4 * s["n_head"] * (n - 1)
        lora += 6 * s["n_lora"] * n
        attention += 6 * s["layers"] * s["attn_width"] * n * (n + 1)
    tokens = sum(lengths)
    return {"frozen_linear": linear / tokens, "lora": lora / tokens,
            "attention": attention / tokens, "total": (linear + lora + attention) / tokens,
            "classic_6n": 6 * s["n_total"]}


def print_table(rows: list[tuple[str, dict]], baseline: dict) -> None:
    header = (f"{'implementation':<22}{'dtype':>9}{'steps':>7}{'tokens':>8}{'tok/step':>10}"
              f"{'fill':>7}{'seconds':>9}{'tokens/s':>10}{'peak RSS MB':>13}"
              f"{'RSS pre-train':>15}{'speed-up':>10}")
    print(header)
    print("-" * len(header))
    for name, r in rows:
        speedup = r["tokens_per_s"] / baseline["tokens_per_s"]
        print(f"{name:<22}{r['dtype']:>9}{r['timed_steps']:>7}{r['tokens']:>8,}"
              f"{r['tokens_per_step']:>10,.0f}{r['fill']:>7.1%}{r['seconds']:>9.2f}"
              f"{r['tokens_per_s']:>10,.1f}{r['peak_rss_mb']:>13.1f}"
              f"{r['rss_before_train_mb']:>15.1f}{speedup:>9.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-dir", default="data",
                        help="holds <profile>/corpus and cache/models (built if missing)")
    parser.add_argument("--tokens", type=int, default=16384,
                        help="size of the corpus slice in tokens (default 16384)")
    parser.add_argument("--steps", type=int, default=4,
                        help="timed optimiser steps after one warm-up step (default 4)")
    parser.add_argument("--model", default="smollm2-135m", help="base model (default smollm2-135m)")
    parser.add_argument("--threads", type=int, default=cores,
                        help=f"torch threads in every child (default {cores})")
    parser.add_argument("--variant", default="ds_mix_shuffled",
                        help="CPT plan variant for ours (default ds_mix_shuffled)")
    parser.add_argument("--baseline-batch", type=int, default=8,
                        help="documents per baseline micro-batch (default 8)")
    parser.add_argument("--baseline-accum", type=int, default=0,
                        help="baseline gradient accumulation (default 0: match ours' tokens/step)")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.steps < 1 or args.threads < 1 or args.baseline_batch < 1:
        parser.error("--tokens, --steps, --threads and --baseline-batch must be positive")
    args.data_dir = Path(args.data_dir).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    started = time.perf_counter()
    bench_dir(args).mkdir(parents=True, exist_ok=True)

    prepared, prepare_peak = spawn_worker(args, "prepare")
    info = json.loads(slice_file(args).read_text())
    mean_len = info["tokens"] / len(info["lengths"])
    ours_tokens_per_step = info["tokens"] / info["plan_steps"]
    if not args.baseline_accum:
        docs_per_step = ours_tokens_per_step / mean_len
        args.baseline_accum = max(1, round(docs_per_step / args.baseline_batch))
    docs = prepared["documents"]
    print(f"slice: {sum(docs.values())} documents ({docs['domain']} domain, {docs['mixed']} mixed;"
          f" first by doc_id of each kind) of {prepared['corpus_documents']:,},"
          f" {prepared['tokens']:,} tokens, mean {mean_len:.0f} per document; plan"
          f" {args.variant}: {prepared['plan_blocks']} blocks, {prepared['plan_steps']} steps,"
          f" fill {prepared['plan_fill']:.1%}; baseline: {args.baseline_batch} documents x"
          f" {args.baseline_accum} accumulation per step"
          f" ({time.perf_counter() - started:.1f} s, peak {prepare_peak:.0f} MB; not timed)",
          flush=True)

    results = {}
    for worker in ("matmul", "ours", "baseline"):
        print(f"running {worker} ...", flush=True)
        result, peak = spawn_worker(args, worker)
        results[worker] = {**result, "peak_rss_mb": peak}
    peak, ours, base = results["matmul"], results["ours"], results["baseline"]

    if ours["structure"]["n_lora"] != base["structure"]["n_lora"]:
        print(f"WARNING: LoRA parameters differ: ours {ours['structure']['n_lora']:,},"
              f" baseline {base['structure']['n_lora']:,}", file=sys.stderr)
    flops = flops_per_token(ours["structure"], info["lengths"])
    bf16_peak = peak["bf16_tflops"] * 1e12
    fp32_peak = peak["fp32_tflops"] * 1e12
    for r in (ours, base):
        r["model_tflops_per_s"] = round(r["tokens_per_s"] * flops["total"] / 1e12, 4)
        r["mfu_vs_bf16_peak"] = round(r["tokens_per_s"] * flops["total"] / bf16_peak, 4)
        r["mfu_vs_fp32_peak"] = round(r["tokens_per_s"] * flops["total"] / fp32_peak, 4)
        r["mfu_6n_vs_bf16_peak"] = round(r["tokens_per_s"] * flops["classic_6n"] / bf16_peak, 4)
    common = {"bench": "cpt_step", "model": args.model, "threads": args.threads,
              "slice_tokens": info["tokens"], "slice_documents": len(info["lengths"])}
    print()
    print("BENCH " + json.dumps({**common, "implementation": "matmul_peak", **peak}))
    print("BENCH " + json.dumps({**common, "implementation": "ours", **ours,
                                 "flops_per_token": round(flops["total"])}))
    print("BENCH " + json.dumps({**common, "implementation": "hf_trainer_baseline", **base,
                                 "flops_per_token": round(flops["total"])}))

    print()
    print_table([("HF Trainer (padded)", base), ("ours (packed, CPT)", ours)], base)
    s = ours["structure"]
    print()
    print(f"tokens/s: ours {ours['tokens_per_s']:,.1f}, baseline {base['tokens_per_s']:,.1f};"
          f" ours/baseline = {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x")
    print(f"peak RSS: ours {ours['peak_rss_mb']:,.1f} MB, baseline {base['peak_rss_mb']:,.1f} MB")
    print(f"first-step loss (sanity): ours {ours['first_loss']}, baseline {base['first_loss']}")
    print(f"matmul peak ({args.threads} threads): bf16 {peak['bf16_tflops']:.3f} TFLOP/s"
          f" {peak['bf16_by_size']}, fp32 {peak['fp32_tflops']:.3f} TFLOP/s {peak['fp32_by_size']}")
    print(f"model: N_body {s['n_body']:,} + N_head {s['n_head']:,} frozen matmul weights,"
          f" N_lora {s['n_lora']:,}, {s['layers']} layers, attention width {s['attn_width']},"
          f" N_total {s['n_total']:,}")
    print("FLOPs per document of n tokens: 4 N_body n + 4 N_head (n-1) + 6 N_lora n"
          " + 6 L A n (n+1)   (frozen fwd + input-grad bwd, LoRA fwd+bwd, causal attention)")
    print(f"FLOPs per real token (slice average): {flops['total'] / 1e6:,.1f} M ="
          f" frozen linear {flops['frozen_linear'] / 1e6:,.1f} M + LoRA {flops['lora'] / 1e6:,.1f} M"
          f" + attention {flops['attention'] / 1e6:,.1f} M;"
          f" classic 6N = {flops['classic_6n'] / 1e6:,.1f} M")
    print(f"MFU ours = {ours['model_tflops_per_s']:.3f} TFLOP/s / {peak['bf16_tflops']:.3f}"
          f" bf16 peak = {ours['mfu_vs_bf16_peak']:.1%}"
          f" (with 6N: {ours['mfu_6n_vs_bf16_peak']:.1%})")
    print(f"baseline (fp32) = {base['model_tflops_per_s']:.3f} TFLOP/s ="
          f" {base['mfu_vs_fp32_peak']:.1%} of the fp32 peak, {base['mfu_vs_bf16_peak']:.1%}"
          f" of the bf16 peak")
    if ours["plan"]["reused"]:
        print(f"note: the slice's plan has {ours['plan']['steps']} steps; ours reused them"
              f" from the start to run {1 + args.steps}")
    print(f"threads: {args.threads} in every child; machine has {os.cpu_count()} cores")
    print(f"whole script: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
