"""Typed configuration: frozen dataclasses and the named profiles.

No globals, no argv or environment reads here: a profile is data. `load_profile` starts from
a named profile and deep-merges a dict of overrides (from a YAML file or Dagster config);
unknown keys are rejected so a typo fails at load time, not in the middle of a run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cprec_core.layout import Layout, LayoutError, check_folder
from cprec_core.prompts import UNIFIED_TEMPLATE
from cprec_core.systems import (CPT_VARIANT_NAMES, DPO_SYSTEM_NAMES, PAPER_VARIANT_NAMES,
                                SFT_SYSTEM_NAMES, SFT_SYSTEMS, TEXT_SYSTEM_NAMES, system)

# The studies that rerun the paper (study, study-gpu, full, paper-7b) train its CPT variants
# and the SFT systems built on them, not the platform's additions (wsa_target)
PAPER_SFT_SYSTEM_NAMES = tuple(s.name for s in SFT_SYSTEMS
                               if s.cpt_variant in (None, *PAPER_VARIANT_NAMES))
PAPER_SYSTEM_NAMES = tuple(s.name for s in SFT_SYSTEMS
                           if not s.ranks_candidates and s.name in PAPER_SFT_SYSTEM_NAMES)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent."""


@dataclass(frozen=True)
class SourceConfig:
    """One input of interactions.

    kind:
      - ``embedded``: a MovieLens set read out of a pinned PyPI wheel (``name``: ml-100k, ml-1m).
      - ``movielens``: RecBole atomic files ``<path>/<stem>.inter`` + ``<stem>.item``.
      - ``amazon2018``: ``<path>/<Category>.json[.gz]`` + ``meta_<Category>.json[.gz]``.
      - ``amazon2023``: ``<path>/<Category>.jsonl[.gz]`` + ``meta_<Category>.jsonl[.gz]``.
      - ``table``: Parquet or CSV files (a file or a folder of them) with columns
        user_id, item_id, title, timestamp, domain (rating optional).
    MovieLens domains are genres, one per movie (``genre_rule``):
      - ``first``: the first listed genre;
      - ``priority``: the first genre of ``genre_priority`` the movie has, else its first genre
        (lets small target genres claim their multi-genre movies);
      - ``whole``: every movie in the one domain ``domain`` (genres ignored, a movie without
        one kept): the data set as the public benchmarks treat it (docs/BENCHMARK.md).
    ``timestamp_unit``: ``auto`` (numbers above 1e11 are milliseconds, others seconds), ``s``
    or ``ms``; for every format with numeric timestamps (table, MovieLens, both Amazon ones).
    ``max_record_bytes`` / ``max_file_bytes``: what one line, and one file after
    decompression, may hold (cprec_core.data.sources.base.ReadLimits).
    """

    kind: str = "embedded"
    name: str = "ml-100k"
    path: str = ""
    genre_rule: str = "first"
    genre_priority: tuple[str, ...] = ()
    domain: str = ""  # genre_rule whole: the one domain
    categories: tuple[str, ...] = ()
    append_year: bool = True
    timestamp_unit: str = "auto"
    max_record_bytes: int = 4 << 20
    max_file_bytes: int = 64 << 30

    def __post_init__(self) -> None:
        if self.max_record_bytes < 1024 or self.max_file_bytes < self.max_record_bytes:
            raise ConfigError(f"max_record_bytes must be at least 1024 and max_file_bytes at"
                              f" least max_record_bytes; got {self.max_record_bytes} and"
                              f" {self.max_file_bytes}")
        kinds = ("embedded", "movielens", "amazon2018", "amazon2023", "table")
        if self.kind not in kinds:
            raise ConfigError(f"source kind {self.kind!r} is not one of {kinds}")
        if self.kind != "embedded" and not self.path:
            raise ConfigError(f"source kind {self.kind!r} needs a path")
        if self.kind != "embedded":
            try:
                check_folder(self.path, f"source path of kind {self.kind!r}")
            except LayoutError as exc:
                raise ConfigError(str(exc)) from exc
        if self.genre_rule not in ("first", "priority", "whole"):
            raise ConfigError(f"genre_rule {self.genre_rule!r} is not 'first', 'priority' or"
                              " 'whole'")
        if (self.genre_rule == "whole") != bool(self.domain.strip()):
            raise ConfigError("genre_rule 'whole' needs a domain name (source `domain`), and"
                              f" `domain` goes with genre_rule 'whole' only; got genre_rule"
                              f" {self.genre_rule!r}, domain {self.domain!r}")
        if self.timestamp_unit not in ("auto", "s", "ms"):
            raise ConfigError(f"timestamp_unit {self.timestamp_unit!r} is not auto, s or ms")


@dataclass(frozen=True)
class DataConfig:
    """Cleaning, splitting and the source/target roles of the domains.

    ``source_domains`` feed continual pre-training; ``target_domains`` are fine-tuned and
    evaluated and never enter the CPT corpus (but for the ``wsa_target`` variant, which also
    reads their train split). Empty ``source_domains`` means every domain that is not a
    target. ``target_train_share`` below 1 is the sparse-target setting: each user's train
    history in a target domain keeps only its most recent share (at least one item);
    validation and test items are unchanged (cprec_core.data.interactions).
    """

    sources: tuple[SourceConfig, ...] = (SourceConfig(),)
    source_domains: tuple[str, ...] = ()
    target_domains: tuple[str, ...] = ()
    user_core: int = 5
    item_core: int = 5
    min_target_items: int = 20
    min_target_users: int = 100
    max_title_chars: int = 160
    target_train_share: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.target_train_share <= 1:
            raise ConfigError(f"data.target_train_share must be in (0, 1], got"
                              f" {self.target_train_share}")
        if not self.sources:
            raise ConfigError("data.sources is empty: configure at least one source")
        overlap = set(self.source_domains) & set(self.target_domains)
        if overlap:
            raise ConfigError(f"domains {sorted(overlap)} are both source and target")
        if self.user_core < 1 or self.item_core < 1:
            raise ConfigError("user_core and item_core must be >= 1")
        if self.max_title_chars < 1 or self.min_target_items < 1 or self.min_target_users < 0:
            raise ConfigError("data.max_title_chars and data.min_target_items must be at least 1"
                              " and data.min_target_users at least 0")


@dataclass(frozen=True)
class CorpusConfig:
    """Behaviour sequences and the unified prompt (method.md section 1.2-1.3)."""

    max_items: int = 20
    min_len: int = 3
    min_domains: int = 2
    template: str = UNIFIED_TEMPLATE
    separator: str = ", "

    def __post_init__(self) -> None:
        if self.min_len < 2:
            raise ConfigError("corpus.min_len must be >= 2 (a history and a next item)")
        if self.max_items < self.min_len:
            raise ConfigError("corpus.max_items must be >= corpus.min_len")
        for slot in ("{history}", "{next}"):
            if slot not in self.template:
                raise ConfigError(f"corpus.template lacks the {slot} placeholder")


@dataclass(frozen=True)
class ModelConfig:
    """The language model. ``name`` is a packaged real model (``smollm2-135m``,
    ``gemma3-270m``: cprec_core.models.packaged), ``tiny-random``, a local folder or a
    Hugging Face model id (loaded offline from the local cache). ``quantization``:
    ``none``, or ``4bit`` for QLoRA (NF4 weights, bf16 compute, bitsandbytes on a CUDA GPU;
    cprec_core/models/quantization.py). Weights load from safetensors only;
    ``allow_pickle_weights`` lets a trusted folder with pickled weights (``.bin``) load."""

    name: str = "smollm2-135m"
    trust_remote_code: bool = False
    quantization: str = "none"
    allow_pickle_weights: bool = False

    def __post_init__(self) -> None:
        try:
            check_folder(self.name, "model.name")
        except LayoutError as exc:
            raise ConfigError(str(exc)) from exc
        if self.quantization not in QUANTIZATIONS:
            raise ConfigError(f"model.quantization {self.quantization!r} is not one of"
                              f" {QUANTIZATIONS}")


QUANTIZATIONS = ("none", "4bit")
DISTRIBUTED = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class TrainConfig:
    """How ``accelerate launch`` spreads the trainers over processes. ``distributed``:
    ``none`` (accelerate's defaults: one process, or plain data parallelism when launched
    with several), ``ddp`` or ``fsdp`` (LoRA under FSDP full-shard, each decoder layer its
    own unit): the launch command gets ``--config_file`` with the matching file of
    cprec_core/training/accelerate/ (``accelerate_config_file``)."""

    distributed: str = "none"

    def __post_init__(self) -> None:
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"train.distributed {self.distributed!r} is not one of"
                              f" {DISTRIBUTED}")


LLARA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA through peft; defaults are LLaRA's (method.md section 2)."""

    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] = LLARA_TARGETS
    shared_dropout: bool = True  # one mask per input tensor (see cprec_core/models/lora.py)


@dataclass(frozen=True)
class CPTConfig:
    """Continual pre-training (method.md section 1.4).

    One epoch over the corpus (or ``max_tokens`` of it, drawn proportionally from both kinds).
    Steps hold ``blocks_per_step`` packed blocks of ``block_size`` tokens, run as micro-batches
    of ``micro_batch`` blocks. Under ``wsa`` the annealing phase is as long as it takes to see
    every mixed sequence once, unless ``anneal_ratio`` (share of steps) is set.
    ``reuse_from``: profiles (in the same data folder) whose finished run of a variant is
    copied instead of trained again when its plan is the same (same corpus documents,
    settings and model; cprec_core.training.cpt.reuse_finished_run), e.g. a sparse-target
    study reusing the full study's source-only CPT.
    """

    variants: tuple[str, ...] = ("wsa",)
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.05
    anneal_ratio: float = 0.0
    block_size: int = 512
    blocks_per_step: int = 8
    micro_batch: int = 4
    max_tokens: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    compile: bool = False
    checkpoint_every: int = 20
    lora: LoraSettings = field(default_factory=LoraSettings)
    reuse_from: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in CPT_VARIANT_NAMES]
        if unknown:
            raise ConfigError(f"cpt.variants {unknown} not in {CPT_VARIANT_NAMES}")
        if self.blocks_per_step % self.micro_batch:
            raise ConfigError("cpt.blocks_per_step must be a multiple of cpt.micro_batch")
        if not 0 <= self.anneal_ratio < 1 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError("cpt.anneal_ratio and cpt.warmup_ratio must be in [0, 1)")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"cpt.dtype {self.dtype!r} is not auto, bf16 or fp32")


def _check_next_item(cfg, section: str) -> None:
    """SASRec's and GRU4Rec's settings: sizes and counts at least 1, a dropout probability,
    a positive learning rate."""
    for name in ("hidden", "layers", "max_len", "batch_size", "max_epochs", "patience"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{section}.{name} must be at least 1, got {getattr(cfg, name)}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"{section}.dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.lr <= 0 or cfg.temperature <= 0 or not 0 < cfg.beta2 < 1 or cfg.negatives < 0:
        raise ConfigError(f"{section}: lr and temperature must be positive, beta2 in (0, 1)"
                          f" and negatives 0 (full softmax) or more; got lr {cfg.lr},"
                          f" temperature {cfg.temperature}, beta2 {cfg.beta2}, negatives"
                          f" {cfg.negatives}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or min(cfg.seeds) < 0:
        raise ConfigError(f"{section}.seeds must be distinct non-negative integers, got"
                          f" {cfg.seeds}")


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec per target domain (cprec_core.models.sasrec): RecBole's shape (d=64, 2 blocks,
    2 heads, pre-LayerNorm ``block``), full-softmax cross-entropy, Adam, early stopping on
    validation NDCG@10. One model per seed of ``seeds`` (the LLaRA projector and the
    two-stage pipeline read the first seed's, or the best seed's on validation); the text
    systems built on SASRec (``sasrec_text_*``) train with these settings too.

    The public benchmark's settings (profile ml1m-bench, docs/BENCHMARK.md) use the rest:
    ``block`` ``original`` (the paper's layout), ``ffn_hidden`` (0: 4 * hidden) and
    ``activation``; the loss's ``negatives`` (0: full softmax; N: sampled softmax over N
    uniform negatives per position), ``temperature`` and ``l2_norm`` (cosine scores);
    Adam's ``beta2``; ``length_buckets``: batches of similar history lengths, each cut to
    its longest (cprec_core.training.next_item.epoch_batches: about half the cost where
    most histories are shorter than ``max_len``); ``refit``: once validation has picked
    the epochs, the same seed trained again that long on every item before the test one
    (train + validation), the model the files hold and the test reads (HSTU's training
    set; twice the time)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    max_len: int = 50
    block: str = "pre_norm"
    ffn_hidden: int = 0
    activation: str = "gelu"
    negatives: int = 0
    temperature: float = 1.0
    l2_norm: bool = False
    lr: float = 1e-3
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    seeds: tuple[int, ...] = (0,)
    length_buckets: bool = False
    refit: bool = False

    def __post_init__(self) -> None:
        _check_next_item(self, "sasrec")
        if self.heads < 1 or self.hidden % self.heads:
            raise ConfigError(f"sasrec.heads must divide sasrec.hidden ({self.hidden}),"
                              f" got {self.heads}")
        if self.block not in ("pre_norm", "original") or self.activation not in ("gelu", "relu"):
            raise ConfigError(f"sasrec.block is pre_norm or original and sasrec.activation gelu"
                              f" or relu; got {self.block!r}, {self.activation!r}")
        if self.ffn_hidden < 0:
            raise ConfigError(f"sasrec.ffn_hidden must be 0 (4 * hidden) or more, got"
                              f" {self.ffn_hidden}")


@dataclass(frozen=True)
class GRU4RecConfig:
    """GRU4Rec per target domain (cprec_core.models.gru4rec), the recurrent classic baseline:
    RecBole's shape (item embeddings 64, one GRU layer of 128, dropout 0.3), trained like
    SASRec (full-softmax cross-entropy, Adam, early stopping on validation NDCG@10); the
    loss settings (``negatives``, ``temperature``, ``l2_norm``, ``beta2``) and
    ``length_buckets`` and ``refit`` as SASRec's."""

    hidden: int = 64
    gru_hidden: int = 128
    layers: int = 1
    dropout: float = 0.3
    max_len: int = 50
    negatives: int = 0
    temperature: float = 1.0
    l2_norm: bool = False
    lr: float = 1e-3
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    seeds: tuple[int, ...] = (0,)
    length_buckets: bool = False
    refit: bool = False

    def __post_init__(self) -> None:
        _check_next_item(self, "gru4rec")
        if self.gru_hidden < 1:
            raise ConfigError(f"gru4rec.gru_hidden must be at least 1, got {self.gru_hidden}")


@dataclass(frozen=True)
class ScalingConfig:
    """The CPT scaling curve (cprec_core.training.cpt_scaling): one WSA run whose stable
    phase branches into a short annealing at each budget, ``fractions`` of ``tokens`` (0:
    ``cpt.max_tokens``, else the whole corpus); ``anneal_share`` of each budget is the
    annealing on mixed sequences. Each point's adapter feeds a text SASRec."""

    fractions: tuple[float, ...] = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
    tokens: int = 0
    anneal_share: float = 0.2

    def __post_init__(self) -> None:
        if not self.fractions or not all(0 < f <= 1 for f in self.fractions) or len(
                set(self.fractions)) != len(self.fractions):
            raise ConfigError(f"scaling.fractions must be distinct numbers in (0, 1], got"
                              f" {self.fractions}")
        if self.tokens < 0 or not 0 < self.anneal_share < 1:
            raise ConfigError("scaling.tokens must be 0 or more and scaling.anneal_share in"
                              " (0, 1)")


POOLINGS = ("mean", "last")


@dataclass(frozen=True)
class ItemTextConfig:
    """LLM item embeddings and the next-item systems that read them (LLM2Rec's use of a
    sequence-tuned LLM). ``systems``: the text systems of cprec_core.systems to train
    (``sasrec_text_base``, ``sasrec_text_cpt``, ...), each with its encoder's settings
    (``sasrec`` or ``gru4rec``) and seeds; every source they name (the base model or a CPT
    variant, which must be in ``cpt.variants``) is embedded once
    (cprec_core.embeddings.item_embeddings). ``pooling``: ``mean`` over the title's tokens
    of the last hidden layer, or ``last`` (its last token). ``adapter_hidden``: the hidden
    width of the MLP from the LLM's width into the encoder's; ``text_only``: the item table
    is that MLP's output alone, without ID embeddings. ``batch_size``: titles per forward;
    ``dtype``: of the forward (``auto``: bf16 where fast)."""

    systems: tuple[str, ...] = ()
    pooling: str = "mean"
    adapter_hidden: int = 256
    text_only: bool = False
    batch_size: int = 64
    dtype: str = "auto"

    def __post_init__(self) -> None:
        unknown = [name for name in self.systems if name not in TEXT_SYSTEM_NAMES]
        if unknown:
            raise ConfigError(f"item_text.systems {unknown} not in {TEXT_SYSTEM_NAMES}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"item_text.pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.adapter_hidden < 1 or self.batch_size < 1:
            raise ConfigError("item_text.adapter_hidden and item_text.batch_size must be at"
                              " least 1")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"item_text.dtype {self.dtype!r} is not auto, bf16 or fp32")

    def sources(self) -> tuple[str, ...]:
        """The embedding sources the text systems read, in registry order."""
        return tuple(dict.fromkeys(system(name).item_source for name in self.systems))


@dataclass(frozen=True)
class RankConfig:
    """How the candidate-aware systems (``*_rank`` in cprec_core.systems) train; the paper
    recipes (``llara``, ``cprec`` and their ablations) ignore this section.

    Every epoch re-draws each window's negatives from a seeded generator. ``lr`` and
    ``epochs`` default to LLaRA's scale (lr 5e-4, 5 epochs over every window, ``max_samples``
    0); the projector, fed standardised SASRec vectors, has its own ``projector_lr``. The
    loss per sample is the cross-entropy over the candidates' summed log-likelihoods plus
    ``ntp_weight`` times the target title's next-token loss per token. ``listing``: the
    prompt lists the candidates as LLaRA's does; without it (cheaper) the candidates are
    only the continuations scored. ``select_every``: optimiser steps between scorings of the
    validation sample (``sft.validation_cases``), the best one kept; 0 = the last step's."""

    lr: float = 5e-4
    projector_lr: float = 1e-3
    temperature_lr: float = 0.05  # the ranking softmax's log-temperature, learned from 0
    # the residual systems' gate on the LLM's z-scored scores, learned from 0
    # (cprec_core.training.residual)
    residual_lr: float = 0.05
    epochs: int = 5
    max_samples: int = 0  # per domain and epoch; 0 = every sliding window
    ntp_weight: float = 0.5
    listing: bool = True
    # each candidate's answer is read after its own injected vector (the model can compare
    # a candidate's vector with the history's); off: the titles alone, as before
    candidate_vectors: bool = True
    select_every: int = 0

    def __post_init__(self) -> None:
        if min(self.lr, self.projector_lr, self.temperature_lr, self.residual_lr) <= 0:
            raise ConfigError("sft.rank: lr, projector_lr, temperature_lr and residual_lr must"
                              " be positive")
        if self.epochs < 1 or self.max_samples < 0 or self.select_every < 0:
            raise ConfigError("sft.rank: epochs must be at least 1, max_samples and"
                              " select_every 0 or more")
        if self.ntp_weight < 0:
            raise ConfigError(f"sft.rank.ntp_weight must be 0 or more, got {self.ntp_weight}")


@dataclass(frozen=True)
class SFTConfig:
    """Per-domain SFT with LLaRA's recipe (method.md section 2). ``systems`` lists which
    adapters the profile trains, by their names in cprec_core.systems: ``llara`` (fresh
    LoRA), ``cprec`` (LoRA from the WSA CPT adapter), ``cprec_<variant>`` (from that CPT
    variant's adapter)."""

    systems: tuple[str, ...] = ("llara", "cprec")
    lr: float = 2e-4
    min_lr_ratio: float = 0.01
    warmup_ratio: float = 0.05
    epochs: int = 1
    max_samples: int = 0  # per domain; 0 = all sliding-window samples
    batch_size: int = 8  # samples per optimiser step (LLaRA: 128)
    micro_batch: int = 4
    history: int = 10
    min_history: int = 3
    negatives: int = 19
    grad_clip: float = 1.0
    seeds: tuple[int, ...] = (0,)  # llara and cprec train one adapter per seed
    dtype: str = "auto"
    checkpoint_every: int = 20
    constant_below: int = 50  # a run of fewer steps trains at the peak rate throughout
    validation_cases: int = 0  # 0: every validation case; N: a seeded sample of N (stated)
    # the target domains (names, as in data.target_domains) whose LLM systems are trained,
    # scored and re-rank; the others get the classic and text-embedding systems only (the
    # demo's way to stay within minutes). Empty: every target domain.
    domains: tuple[str, ...] = ()
    rank: RankConfig = field(default_factory=RankConfig)

    def seeds_for(self, name: str) -> tuple[int, ...]:
        """The headline systems (LLaRA, CPRec) get every seed, for a mean and a spread in the
        leaderboard; the ablations the first seed only."""
        return self.seeds if system(name).all_seeds else self.seeds[:1]

    def listing_for(self, name: str) -> bool:
        """Whether system ``name``'s hybrid prompt lists the candidates: always for the paper
        recipes (LLaRA's prompt), ``rank.listing`` for the candidate-aware systems."""
        return self.rank.listing if system(name).ranks_candidates else True

    def candidate_vectors_for(self, name: str) -> bool:
        """Whether system ``name`` reads each candidate's answer after its vector: the
        candidate-aware systems (and the DPO systems trained from one) with
        ``rank.candidate_vectors``; never the paper recipes."""
        entry = system(name)
        source = system(entry.sft_init) if entry.sft_init else entry
        return self.rank.candidate_vectors and source.ranks_candidates

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ConfigError(f"sft.seeds must be distinct non-negative integers, got {self.seeds}")
        unknown = [name for name in self.systems if name not in SFT_SYSTEM_NAMES]
        if unknown:
            raise ConfigError(f"sft.systems {unknown} not in {SFT_SYSTEM_NAMES}")
        if self.batch_size % self.micro_batch:
            raise ConfigError("sft.batch_size must be a multiple of sft.micro_batch")
        if self.validation_cases < 0:
            raise ConfigError("sft.validation_cases must be 0 (every case) or more")


@dataclass(frozen=True)
class DPOConfig:
    """Preference post-training after SFT (cprec_core.training.dpo), the step the CPRec
    authors name next. ``systems``: DPO systems of cprec_core.systems to train; each starts
    from its SFT system's adapter (``cprec_rank`` for ``cprec_dpo``, ``llara_rank`` for
    ``llara_dpo``), which is also the frozen reference.

    Pairs (cprec_core.training.dpo_pairs): training windows with their own seeded candidates
    (``max_windows``, 0 = all), each giving ``hard_negatives`` pairs against the SFT model's
    highest-ranked wrong candidates and ``random_negatives`` against random wrong ones. Loss:
    ``loss_type`` ``sigmoid`` (DPO) or ``ipo``, with ``beta``. ``batch_size`` windows per
    optimiser step, ``micro_batch`` per forward. The evaluation warns when a DPO system's
    ValidRatio falls more than ``valid_ratio_margin`` below its SFT system's."""

    systems: tuple[str, ...] = ()
    beta: float = 0.1
    loss_type: str = "sigmoid"
    hard_negatives: int = 1
    random_negatives: int = 1
    max_windows: int = 0
    window_seed: int = 7  # not an SFT draw: other candidates than the SFT saw
    lr: float = 5e-5
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.1
    epochs: int = 1
    batch_size: int = 8
    micro_batch: int = 4
    grad_clip: float = 1.0
    checkpoint_every: int = 20
    constant_below: int = 50  # a run of fewer steps trains at the peak rate throughout
    valid_ratio_margin: float = 0.02

    def __post_init__(self) -> None:
        unknown = [name for name in self.systems if name not in DPO_SYSTEM_NAMES]
        if unknown:
            raise ConfigError(f"dpo.systems {unknown} not in {DPO_SYSTEM_NAMES}")
        if self.loss_type not in ("sigmoid", "ipo"):
            raise ConfigError(f"dpo.loss_type {self.loss_type!r} is not sigmoid or ipo")
        if self.beta <= 0 or self.lr <= 0:
            raise ConfigError("dpo.beta and dpo.lr must be positive")
        if min(self.hard_negatives, self.random_negatives) < 0 or (
                self.hard_negatives + self.random_negatives == 0):
            raise ConfigError("dpo: hard_negatives and random_negatives are 0 or more, and at"
                              " least one is positive")
        if self.epochs < 1 or self.max_windows < 0 or self.checkpoint_every < 1:
            raise ConfigError("dpo: epochs and checkpoint_every must be at least 1,"
                              " max_windows 0 or more")
        if self.batch_size % self.micro_batch:
            raise ConfigError("dpo.batch_size must be a multiple of dpo.micro_batch")


@dataclass(frozen=True)
class EvalConfig:
    """``max_cases``: evaluate every system on the same seeded sample of this many cases per
    domain and split (0 = all cases). ``zero_shot``: also score the base model and the WSA CPT
    adapter without SFT (text prompt). ``generation``: greedy answers for ValidRatio and HR@1
    as in the paper, at most ``max_new_tokens`` tokens. A ValidRatio under
    ``valid_ratio_floor`` makes the evaluation check warn. ``bootstrap``: resamples for the
    leaderboard's 95 % intervals. ``keep_freed_heap``: the scoring process keeps freed
    memory for reuse while it scores a system (cprec_core/evaluation/allocator.py; RSS
    stays at the peak until the next system); switch off where memory is tight.
    ``fusion``: an SFT system whose z-scored likelihoods, times a lambda of
    ``fusion_lambdas`` picked on the validation split, are added to the z-scored scores of
    the classic system (SASRec or GRU4Rec) that is better on validation: the ``fused``
    system. ``shuffled_ablation``: score each hybrid system's first seed once more with every
    injected vector replaced by another item's (``<system> (shuffled emb)``), likelihood
    only."""

    max_cases: int = 0
    seed: int = 0
    zero_shot: bool = True
    generation: bool = True
    max_new_tokens: int = 32
    batch_size: int = 8  # cases per forward of an LLM system
    valid_ratio_floor: float = 0.5
    bootstrap: int = 1000
    keep_freed_heap: bool = True
    fusion: str = "cprec_rank"  # the SFT system fused with the best classic one ("": none)
    fusion_lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
    shuffled_ablation: bool = True  # each hybrid system once more, vectors shuffled

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluation.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_cases < 0:
            raise ConfigError(f"evaluation.max_cases must be 0 (all) or more, got {self.max_cases}")
        if self.fusion and self.fusion not in SFT_SYSTEM_NAMES:
            raise ConfigError(f"evaluation.fusion {self.fusion!r} is not an SFT system"
                              f" ({SFT_SYSTEM_NAMES})")
        if not self.fusion_lambdas or min(self.fusion_lambdas) < 0:
            raise ConfigError("evaluation.fusion_lambdas must be non-negative numbers")
        if not 0 <= self.valid_ratio_floor <= 1:
            raise ConfigError("evaluation.valid_ratio_floor must be between 0 and 1,"
                              f" got {self.valid_ratio_floor}")


@dataclass(frozen=True)
class RecommendConfig:
    """The product stage (cprec_core.recommend): for every user of a target domain, the top
    ``k`` unseen items of a two-stage pipeline, retrieval of the top ``retrieve`` items over
    the whole domain by the better classic model, then re-ranking of those by the best LLM
    system. ``rerank_users``: re-rank only the first this many users (most recent activity
    first; 0 = every user), the others keep the retrieval's order, each row saying which
    stage produced it: re-ranking costs an LLM forward per user. ``full_ranking_cases``:
    test users of the full-ranking evaluation (0 = all; the same seeded sample for every
    system). ``keep_snapshots``: exported snapshots kept per domain (the service may still
    read an older one)."""

    k: int = 10
    retrieve: int = 50
    rerank_users: int = 0
    full_ranking_cases: int = 0
    keep_snapshots: int = 3

    def __post_init__(self) -> None:
        if self.k < 1 or self.retrieve < self.k:
            raise ConfigError(f"recommend: k must be at least 1 and retrieve at least k,"
                              f" got k {self.k}, retrieve {self.retrieve}")
        if min(self.rerank_users, self.full_ranking_cases) < 0 or self.keep_snapshots < 1:
            raise ConfigError("recommend: rerank_users and full_ranking_cases are 0 (all) or"
                              " more, keep_snapshots at least 1")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow experiment tracking (cprec_core.tracking, docs/OPERATIONS.md). ``enabled``:
    every training, evaluation and study run logs an MLflow run. ``uri``: the tracking
    server; "" takes ``MLFLOW_TRACKING_URI`` from the environment, else a SQLite store under
    the profile's data folder (``<data_dir>/<profile>/mlflow``). ``experiment``: "" means
    ``cprec-<profile>``. ``timeout_s``: the longest one call to the server may take (no
    retries), and how long a finished training waits for its last metrics to be sent; the
    calls run beside training, so a slow or unreachable server never holds a step up.
    ``register``: adapters passing their blocking checks get a version in the model registry.
    ``ui_url``: where ``make mlflow`` serves the local store (asset metadata links there)."""

    enabled: bool = True
    uri: str = ""
    experiment: str = ""
    timeout_s: float = 10.0
    register: bool = True
    ui_url: str = "http://127.0.0.1:5000"

    def __post_init__(self) -> None:
        for name in ("uri", "experiment", "ui_url"):
            value = getattr(self, name)
            if re.search(r"[\x00-\x1f\x7f]", value) or len(value) > 1000:
                raise ConfigError(f"tracking.{name}: control characters or over 1000"
                                  f" characters in {value[:80]!r}")
        if self.uri and not re.match(r"(sqlite|https?|postgresql|mysql|databricks)[:+]",
                                     self.uri):  # MLflow 3 refuses its file store by default
            raise ConfigError(f"tracking.uri {self.uri!r} is not an MLflow tracking URI"
                              " (sqlite:///..., http(s)://..., postgresql://..., databricks)")
        if not re.match(r"https?://", self.ui_url):
            raise ConfigError(f"tracking.ui_url must start with http:// or https://,"
                              f" got {self.ui_url!r}")


@dataclass(frozen=True)
class Profile:
    name: str = "demo"
    data_dir: str = "data"
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cpt: CPTConfig = field(default_factory=CPTConfig)
    sasrec: SASRecConfig = field(default_factory=SASRecConfig)
    gru4rec: GRU4RecConfig = field(default_factory=GRU4RecConfig)
    item_text: ItemTextConfig = field(default_factory=ItemTextConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", self.device):
            raise ConfigError(f"device {self.device!r} is not cpu, auto (the GPU if there is"
                              " one), cuda or cuda:N")
        try:
            check_folder(self.data_dir, "data_dir")
        except LayoutError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            _ = self.layout  # builds the paths, which checks the name
        except LayoutError as exc:
            raise ConfigError(f"name: {exc}") from exc
        strangers = sorted(set(self.sft.domains) - set(self.data.target_domains))
        if strangers:
            raise ConfigError(f"sft.domains {strangers} are not in data.target_domains"
                              f" {list(self.data.target_domains)}")
        untrained = [name for name in self.item_text.systems
                     if system(name).cpt_variant not in (None, *self.cpt.variants)]
        if untrained:
            raise ConfigError(f"item_text.systems {untrained} read CPT variants that"
                              f" cpt.variants {list(self.cpt.variants)} does not train")
        if self.model.quantization != "none" and self.train.distributed == "fsdp":
            raise ConfigError("model.quantization 4bit does not combine with train.distributed"
                              " fsdp here (sharded 4-bit weights need a quant storage dtype):"
                              " use ddp or none")

    @property
    def layout(self) -> Layout:
        """Where this profile's artifacts live (cprec_core.layout)."""
        return Layout(Path(self.data_dir), self.name)


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------
# Named profiles, as plain dicts merged onto the dataclass defaults.

_ML100K_DEMO = {
    "data": {
        "sources": [
            {"kind": "embedded", "name": "ml-100k", "genre_rule": "priority",
             "genre_priority": ["Crime", "Sci-Fi"]},
        ],
        "source_domains": ["Drama", "Comedy", "Action"],
        "target_domains": ["Crime", "Sci-Fi"],
        "user_core": 5,
        "item_core": 5,
        "min_target_items": 20,
        "min_target_users": 500,
    },
}

# MovieLens-1M with three target domains: the GPU profiles' data
_ML1M = {"data": {
    "sources": [{"kind": "embedded", "name": "ml-1m", "genre_rule": "priority",
                 "genre_priority": ["Crime", "Sci-Fi", "Horror"]}],
    "source_domains": [], "target_domains": ["Crime", "Sci-Fi", "Horror"],
    "min_target_users": 500}}


# The candidate-aware studies (study-rank, study-dpo): the rank systems' SFT, then DPO from
# both candidate-aware systems (96 fresh training windows, a hard and a random negative
# each, two epochs, at a fifth of the rank SFT's lr), scoring of 100 seeded test users by
# likelihood, and the product stage
_RANK_STUDY_SFT = {"max_samples": 40, "epochs": 2, "select_every": 5, "listing": False}
_RANK_STUDY_AFTER_SFT = {
    "dpo": {"systems": ["cprec_dpo", "llara_dpo"], "max_windows": 96, "epochs": 2,
            "lr": 1e-4, "checkpoint_every": 6},
    "evaluation": {"max_cases": 100, "generation": False, "zero_shot": False,
                   "batch_size": 16},
    "recommend": {"rerank_users": 100, "full_ranking_cases": 100}}


_DEMO = {
    "name": "demo", "device": "cpu", **_ML100K_DEMO,
    # sized for `make demo` within 10 minutes on a 2-core CPU (README; the stage-time table
    # it prints): every asset family once, the LLM systems in Crime only (sft.domains)
    "cpt": {"max_tokens": 10_000, "checkpoint_every": 10},
    "sasrec": {"patience": 5}, "gru4rec": {"patience": 5},
    # SASRec reading the base model's and the CPT adapter's title embeddings
    "item_text": {"systems": ["sasrec_text_base", "sasrec_text_cpt"]},
    "sft": {"systems": ["llara", "cprec", "cprec_rank", "cprec_residual"], "max_samples": 16,
            "checkpoint_every": 2, "validation_cases": 8, "domains": ["Crime"],
            "rank": {"epochs": 1, "max_samples": 16, "listing": False}},
    "dpo": {"systems": ["cprec_dpo"], "max_windows": 16, "checkpoint_every": 2},
    # no zero-shot rows (the studies have them)
    "evaluation": {"max_cases": 20, "max_new_tokens": 24, "shuffled_ablation": False,
                   "zero_shot": False},
    # every user gets a top 10; the LLM re-ranks the 20 most recently active
    "recommend": {"retrieve": 20, "rerank_users": 20, "full_ranking_cases": 50}}


def _cpu_study(name: str, cpt_tokens: int, sft_samples: int, cpt_every: int,
               sft_every: int) -> dict[str, Any]:
    """The CPU evaluation study at one training size: every CPT variant and SFT system, LLaRA
    and CPRec over three seeds, every test user scored; only the training sizes differ."""
    return {"name": name, "device": "cpu", **_ML100K_DEMO,
            "cpt": {"variants": list(PAPER_VARIANT_NAMES), "max_tokens": cpt_tokens,
                    "checkpoint_every": cpt_every},
            "sft": {"systems": list(PAPER_SYSTEM_NAMES), "seeds": [0, 1, 2],
                    "max_samples": sft_samples, "checkpoint_every": sft_every},
            "evaluation": {"max_cases": 0, "max_new_tokens": 24, "batch_size": 16}}


# The LLM item-embedding study (`make study-text`, docs/RESULTS-text.md): SASRec and GRU4Rec
# with the base model's, the CPT adapters' and the shuffled control's title embeddings, three
# seeds each, every test user; CPT on 300k tokens per variant, source-only (`wsa`, the
# paper's transfer setting) and with the target domains' train split (`wsa_target`, what a
# team with in-domain logs would run). No generative ranker: the study measures what CPT
# puts into the item representations. The sparse-target setting keeps 20 % of each user's
# train history in the target domains and reuses the full study's source-only CPT.
_TEXT_STUDY_SYSTEMS = ["sasrec_text_base", "sasrec_text_cpt", "sasrec_text_control",
                       "sasrec_text_cpt_target", "gru4rec_text_base", "gru4rec_text_cpt",
                       "gru4rec_text_control", "sasrec_text_base_shuffled"]
_TEXT_STUDY = {
    "device": "cpu", **_ML100K_DEMO,
    "cpt": {"variants": ["wsa", "shuffled_control", "wsa_target"], "max_tokens": 300_000,
            "checkpoint_every": 10},
    "sasrec": {"seeds": [0, 1, 2]}, "gru4rec": {"seeds": [0, 1, 2]},
    "item_text": {"systems": _TEXT_STUDY_SYSTEMS},
    "sft": {"systems": []},
    "evaluation": {"max_cases": 0, "zero_shot": False, "generation": False, "fusion": "",
                   "shuffled_ablation": False},
    "recommend": {"full_ranking_cases": 0}}


# The public benchmark (`make benchmark`, docs/BENCHMARK.md): MovieLens-1M as one target
# domain under the HSTU paper's protocol (Zhai et al., ICML 2024; facebookresearch/
# generative-recommenders): every user and every rating, time order (ties in file order),
# the last item test and the one before validation, histories up to 200 items, full ranking
# over every item with the history excluded. SASRec with that repository's ML-1M settings
# (d 50, 2 blocks, 1 head, feed-forward 50 with ReLU, dropout 0.2, sampled softmax over 128
# uniform negatives at temperature 0.05 on L2-normalised vectors, Adam lr 1e-3 with beta2
# 0.98, batch 128); GRU4Rec with the same width and loss. CPT (`wsa_target`) reads the
# train split's title sequences; the text systems read the base model's and that adapter's
# title embeddings. Three seeds each; no generative LLM stage (the sequences are too long
# for a 2-core CPU to rank with an LLM over 3,706 items).
_HSTU_LOSS = {"negatives": 128, "temperature": 0.05, "l2_norm": True, "lr": 1e-3,
              "beta2": 0.98, "batch_size": 128, "max_len": 200, "max_epochs": 101,
              "patience": 5, "seeds": [0, 1, 2], "length_buckets": True}
_ML1M_BENCH = {
    "name": "ml1m-bench", "device": "cpu",
    "data": {"sources": [{"kind": "embedded", "name": "ml-1m", "genre_rule": "whole",
                          "domain": "ML-1M"}],
             "source_domains": [], "target_domains": ["ML-1M"], "user_core": 1,
             "item_core": 1, "min_target_items": 1, "min_target_users": 1},
    "cpt": {"variants": ["wsa_target"], "max_tokens": 100_000, "anneal_ratio": 0.2,
            "checkpoint_every": 10},
    "sasrec": {"hidden": 50, "layers": 2, "heads": 1, "dropout": 0.2, "block": "original",
               "ffn_hidden": 50, "activation": "relu", **_HSTU_LOSS},
    "gru4rec": {"hidden": 50, "gru_hidden": 100, "dropout": 0.2, **_HSTU_LOSS},
    "item_text": {"systems": ["sasrec_text_base", "sasrec_text_cpt_target"]},
    "sft": {"systems": []},
    "evaluation": {"max_cases": 0, "zero_shot": False, "generation": False, "fusion": "",
                   "shuffled_ablation": False},
    "recommend": {"full_ranking_cases": 0, "rerank_users": 0}}


PROFILES: dict[str, dict[str, Any]] = {
    # CPU, MovieLens-100K: large genres pre-train, two unseen genres are the targets.
    # The CPT token budget keeps `make demo` within minutes on 2 cores.
    "demo": _DEMO,
    # The demo with Gemma 3 270M in place of SmolLM2-135M (docs/MODELS.md)
    "demo-gemma3": {**_DEMO, "name": "demo-gemma3", "model": {"name": "gemma3-270m"}},
    # The paper-recipe study on CPU (docs/RESULTS-paper.md, with its recorded compute): every CPT
    # variant and SFT system, LLaRA and CPRec over three seeds, every test user.
    "study": _cpu_study("study", cpt_tokens=150_000, sft_samples=96, cpt_every=10, sft_every=4),
    # The same study with less training, sized for two hours on a 2-core CPU with fast bf16;
    # scoring every test user costs the same whatever the training size
    # (benchmarks/bench_scoring_bound.py says what it costs on a given machine).
    "study-2h": _cpu_study("study-2h", cpt_tokens=40_000, sft_samples=32, cpt_every=4,
                           sft_every=2),
    # The candidate-aware study on CPU (`make study`, docs/RESULTS.md): the paper recipes,
    # the candidate-aware systems and their control arm over two seeds (the control one),
    # the fused system and the shuffled-vector ablation, on a seeded 100 test users per
    # domain: a small fraction of LLaRA's scale. On 2 cores without bf16 (AMD EPYC Zen 2,
    # fp32) it takes about 2 h 50 min: corpus and CPT 13 min, SASRec and GRU4Rec 2 min,
    # then per domain about 40 min of SFT and 33-35 of scoring (CHANGELOG.md); a CPU with
    # AMX runs bf16 several times faster.
    "study-rank": {
        "name": "study-rank", "device": "cpu", **_ML100K_DEMO,
        "cpt": {"variants": ["wsa", "shuffled_control"], "max_tokens": 30_000,
                "checkpoint_every": 5},
        "sft": {"systems": ["llara", "cprec", "llara_rank", "cprec_rank",
                            "cprec_shuffled_control_rank", "llara_residual", "cprec_residual"],
                "seeds": [0, 1], "max_samples": 32, "checkpoint_every": 5,
                "rank": _RANK_STUDY_SFT},
        **_RANK_STUDY_AFTER_SFT},
    # The DPO study, fitted to one session on a 2-core CPU (`make study-dpo` writes
    # docs/RESULTS-dpo.md): study-rank's data, CPT, candidate-aware SFT and DPO settings,
    # trimmed to what DPO compares (the two rank systems it starts from) and to one seed.
    "study-dpo": {
        "name": "study-dpo", "device": "cpu", **_ML100K_DEMO,
        "cpt": {"variants": ["wsa"], "max_tokens": 30_000, "checkpoint_every": 5},
        "sft": {"systems": ["llara_rank", "cprec_rank"], "seeds": [0], "checkpoint_every": 5,
                "rank": _RANK_STUDY_SFT},
        **_RANK_STUDY_AFTER_SFT},
    # The residual ranker's rows (issue 35), sized for one session on a 2-core CPU (`make
    # study-residual` writes docs/RESULTS-residual.md): study-rank's data, CPT (WSA only)
    # and candidate-aware settings; cprec_rank and the two residual systems, one seed; 200
    # validation cases per domain for selection (of 558 and 649: what fits, stated); no DPO
    "study-residual": _merge({
        "name": "study-residual", "device": "cpu", **_ML100K_DEMO,
        "cpt": {"variants": ["wsa"], "max_tokens": 30_000, "checkpoint_every": 5},
        "sft": {"systems": ["cprec_rank", "llara_residual", "cprec_residual"], "seeds": [0],
                "checkpoint_every": 5, "validation_cases": 200, "rank": _RANK_STUDY_SFT},
        **_RANK_STUDY_AFTER_SFT}, {"dpo": {"systems": []},
                                   "recommend": {"rerank_users": 20, "full_ranking_cases": 50}}),
    # The same study on one GPU, scaled up (`make study-gpu` writes docs/RESULTS-gpu.md; the
    # run is in docs/SCALING.md section 1b): every test user, one epoch of CPT over the whole
    # corpus, 2,048 SFT samples per domain.
    "study-gpu": {"name": "study-gpu", "device": "auto", **_ML100K_DEMO,
                  "cpt": {"variants": list(PAPER_VARIANT_NAMES), "block_size": 1024,
                          "blocks_per_step": 16, "micro_batch": 16, "checkpoint_every": 25},
                  "sft": {"systems": list(PAPER_SFT_SYSTEM_NAMES), "seeds": [0, 1, 2],
                          "max_samples": 2048, "batch_size": 32, "micro_batch": 16,
                          "checkpoint_every": 32,
                          # the candidate-aware systems at LLaRA's scale: every window
                          "rank": {"epochs": 3, "max_samples": 0, "select_every": 32}},
                  "evaluation": {"max_cases": 0, "max_new_tokens": 24, "batch_size": 128}},
    # The paper's scale: LLaMA-2-7B with LoRA (r 8, alpha 32, dropout 0.1 on the seven
    # projections), one epoch of WSA CPT (5 % warmup) over the whole corpus, LLaRA's SFT
    # (effective batch 128, lr 2e-4, 5 % warmup then cosine to lr/100, 5 epochs, 19
    # negatives, history 10), every test user. The weights are the user's: download
    # meta-llama/Llama-2-7b-hf (or any Llama-architecture folder) to model.name, or override
    # model.name; `--dry-run` checks the plan and the memory first (docs/SCALING.md). Data:
    # MovieLens-1M as `full` until data.sources points at the paper's Amazon categories.
    "paper-7b": {
        "name": "paper-7b",
        "device": "auto",
        **_ML1M,
        "model": {"name": "data/models/Llama-2-7b-hf"},
        "cpt": {"variants": list(PAPER_VARIANT_NAMES), "lr": 2e-4, "min_lr_ratio": 0.1,
                "warmup_ratio": 0.05, "block_size": 1024, "blocks_per_step": 32,
                "micro_batch": 4, "max_tokens": 0, "dtype": "auto",
                "gradient_checkpointing": True, "checkpoint_every": 50},
        "sft": {"systems": list(PAPER_SYSTEM_NAMES), "lr": 2e-4, "min_lr_ratio": 0.01,
                "warmup_ratio": 0.05, "epochs": 5, "max_samples": 0, "batch_size": 128,
                "micro_batch": 4, "history": 10, "negatives": 19, "seeds": [0],
                "checkpoint_every": 50},
        "evaluation": {"max_cases": 0, "batch_size": 16},
    },
    "ml1m-bench": _ML1M_BENCH,
    # The same SASRec (seed 0) refit on train + validation for the epochs validation picked: the
    # training set of HSTU's protocol (docs/BENCHMARK.md reads its row where it was run)
    "ml1m-bench-refit": _merge(_ML1M_BENCH, {
        "name": "ml1m-bench-refit", "sasrec": {"refit": True, "seeds": [0]},
        "item_text": {"systems": []},
        "recommend": {"full_ranking_cases": 0}}),
    # The same SASRec (seed 0) through all of HSTU's 101 epochs (no early stop; the best validation
    # epoch kept): what training length changes (docs/BENCHMARK.md)
    "ml1m-bench-long": _merge(_ML1M_BENCH, {
        "name": "ml1m-bench-long", "sasrec": {"patience": 101, "seeds": [0]},
        "item_text": {"systems": []},
        "recommend": {"full_ranking_cases": 0}}),
    # LLM item embeddings in the sequential recommenders (`make study-text`)
    "study-text": {**_TEXT_STUDY, "name": "study-text"},
    "study-text-sparse": _merge(_TEXT_STUDY, {
        "name": "study-text-sparse", "data": {"target_train_share": 0.2},
        "cpt": {"variants": ["wsa", "shuffled_control"], "reuse_from": ["study-text"]},
        "item_text": {"systems": [s for s in _TEXT_STUDY_SYSTEMS if "cpt_target" not in s]}}),
    # Everything the data has; a GPU is expected. Point data.sources at your own logs.
    "full": {
        "name": "full",
        "device": "auto",
        **_ML1M,
        "cpt": {"variants": list(PAPER_VARIANT_NAMES), "block_size": 1024, "blocks_per_step": 32,
                "micro_batch": 8, "checkpoint_every": 100},
        "sft": {"systems": list(PAPER_SFT_SYSTEM_NAMES), "batch_size": 128, "micro_batch": 8,
                "epochs": 5, "checkpoint_every": 50},
    },
}


def _show(value: Any, limit: int = 80) -> str:
    """A value quoted in an error, cut short: never the whole of a large structure."""
    text = reprlib.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_show(value)}")
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {_show(value)}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {_show(value)}")
    if tp is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{where}: expected a number, got {_show(value)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_show(value)}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; expected some of {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    for k, v in kwargs.items():
        check_range(k, v, f"{where}.{k}" if where else k)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


# Every number in a profile is finite and at least 0 (0 means "all" or "off" where a field
# allows it); these must be at least 1, and these fractions at most 1 (dropout below 1).
AT_LEAST_ONE = {"adapter_hidden", "alpha", "batch_size", "block_size", "blocks_per_step",
                "bootstrap", "epochs", "gru_hidden", "heads", "hidden", "history", "k", "layers",
                "max_epochs", "max_items", "max_len", "max_new_tokens", "micro_batch",
                "negatives", "patience", "r", "retrieve"}
POSITIVE = {"lr", "projector_lr", "temperature_lr", "beta", "timeout_s"}
FRACTIONS = {"anneal_ratio", "anneal_share", "min_lr_ratio", "ntp_weight",
             "target_train_share", "valid_ratio_floor", "valid_ratio_margin", "warmup_ratio"}


def check_range(name: str, value: Any, key: str) -> None:
    """The ranges above for one field: an error naming the key, checked before the section
    is built (so before its own checks divide by it), instead of a crash or a silent no-op
    deep in a trainer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    low = 1 if name in AT_LEAST_ONE else 0
    if name in POSITIVE and value <= 0:
        raise ConfigError(f"{key}: must be greater than 0, got {value!r}")
    if value < low:
        raise ConfigError(f"{key}: must be at least {low}, got {value!r}")
    if name in FRACTIONS and value > 1:
        raise ConfigError(f"{key}: must be at most 1, got {value!r}")
    if name == "dropout" and value >= 1:
        raise ConfigError(f"{key}: must be below 1, got {value!r}")


def load_profile(name: str = "demo", overrides: dict[str, Any] | None = None) -> Profile:
    """The named profile with ``overrides`` deep-merged on top, its values range-checked."""
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; known profiles: {sorted(PROFILES)}")
    return from_dict(Profile, _merge(PROFILES[name], overrides or {}))


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 100_000  # after aliases are expanded
MAX_CONFIG_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that also refuses duplicate keys and bounds
    nesting depth; ``read_yaml`` bounds the size the aliases expand to."""

    def __init__(self, stream, name: str):
        super().__init__(stream)
        self.name, self.depth = name, 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self.name}:{mark.line + 1}: nested deeper than"
                                  f" {MAX_CONFIG_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(f"{self.name}:{line}: duplicate key {_show(key)} (first at"
                                  f" line {seen[key]})")
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


def _expanded_nodes(root) -> int:
    """How many nodes the document holds once every alias is expanded (a DAG walk)."""
    sizes: dict[int, int] = {}

    def size(node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = MAX_CONFIG_NODES + 1  # a cycle counts as too large
            children = ([v for pair in node.value for v in pair]
                        if isinstance(node, yaml.MappingNode) else
                        node.value if isinstance(node, yaml.SequenceNode) else [])
            sizes[id(node)] = min(1 + sum(size(c) for c in children), MAX_CONFIG_NODES + 1)
        return sizes[id(node)]

    return size(root)


def read_yaml(path: Path) -> Any:
    """A YAML file read with limits: at most ``MAX_CONFIG_BYTES``, ``MAX_CONFIG_DEPTH``
    levels and ``MAX_CONFIG_NODES`` nodes with aliases expanded (a few hundred bytes of
    nested aliases can stand for billions), no duplicate key, no Python tag; every error a
    ``ConfigError`` naming the file and the line."""
    with open(path, "rb") as fh:
        raw = fh.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES:,} bytes; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    loader = _ConfigLoader(text, str(path))
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_nodes(root) > MAX_CONFIG_NODES:
            raise ConfigError(f"{path}: more than {MAX_CONFIG_NODES:,} values once its aliases"
                              " are expanded; not a config file")
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML here ({problem})") from None
    finally:
        loader.dispose()


def load_config_file(path: str | Path) -> Profile:
    """A YAML file ``{profile: NAME, ...overrides}``; see docs/CONFIG.md."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    name = data.pop("profile", "demo")
    try:
        return load_profile(name, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
