"""Where every artifact lives: the one owner of paths under a profile's data folder.

Trainers write, the evaluation and the assets read, and all of them ask a ``Layout`` for
the path, so a file name is written out here and nowhere else. Partition keys and names are
checked before they become path parts, so a key cannot point outside the folder.

    data/<profile>/cprec.duckdb                         the database
    data/<profile>/corpus/{cpt_corpus,items}.parquet    the CPT corpus snapshot (+ tokenizer/)
    data/<profile>/cpt/<variant>/                       a CPT adapter       (TrainedAdapter)
    data/<profile>/sft/<system>/<domain>/seed-<n>/      an SFT adapter      (TrainedAdapter)
    data/<profile>/<next-item system>/<domain>/seed-<n>/  a next-item model (NextItemFiles)
    data/<profile>/item_embeddings/<source>/           LLM item embeddings (ItemEmbeddingFiles)
    data/<profile>/recommendations/<domain>/            exported top-k      (RecommendationFiles)
    data/<profile>/leaderboard.png
    data/cache/                                         wheels, data sets, models (shared)
    data/landing/                                       deliveries of new data (default)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a folder name: profiles, systems, partition keys


CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class LayoutError(ValueError):
    """A name or partition key that cannot be a folder name here."""


def _part(value: str, what: str) -> str:
    if not NAME.fullmatch(value):
        raise LayoutError(f"{value!r} is not a {what}")
    return value


def check_folder(value: object, what: str = "data folder") -> Path:
    """``value`` as a folder path if it can be one: a non-empty string with no NUL or other
    control character (they truncate paths in C libraries and corrupt log lines). Quotes,
    ``;``, ``..`` and absolute paths are allowed: a folder is the user's choice, and no path
    is ever written into SQL text (DuckDB is given paths as parameters or through its Python
    API), so such characters are harmless here."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise LayoutError(f"{what} must be a non-empty path, got {value!r}")
    if CONTROL.search(str(value)):
        raise LayoutError(f"{what} {str(value)!r} contains a NUL or control character")
    return Path(value)


def check_partition_key(slug: str) -> str:
    """``slug`` if it is a valid domain partition key (lower-case, digits, ``-``, ``_``)."""
    if not NAME.fullmatch(slug):
        raise LayoutError(f"{slug!r} is not a domain partition key")
    return slug


@dataclass(frozen=True)
class TrainedAdapter:
    """The folder of one LoRA training run (CPT or SFT): the peft adapter, the manifest, the
    per-step log, resumable checkpoints, and for SFT the projector."""

    path: Path

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def adapter_weights(self) -> Path:
        """Written by peft's ``save_pretrained``; its presence means the run finished."""
        return self.adapter / "adapter_model.safetensors"

    @property
    def projector(self) -> Path:
        return self.path / "projector.safetensors"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def train_log(self) -> Path:
        return self.path / "train_log.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def validation_log(self) -> Path:
        """SFT: one line per scoring of the validation sample (model selection)."""
        return self.path / "validation_log.jsonl"

    @property
    def pairs(self) -> Path:
        """DPO: the preference pairs mined by the SFT adapter it starts from
        (cprec_core.training.dpo_pairs), with ``pairs_info`` beside them."""
        return self.path / "pairs.parquet"

    @property
    def pairs_info(self) -> Path:
        return self.path / "pairs.json"

    @property
    def best(self) -> Path:
        """SFT with model selection: ``step-NNNNNN/`` folders (adapter, projector) of the
        best validation scores, the newest kept once a checkpoint covers it."""
        return self.path / "best"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def tracking_file(self) -> Path:
        """The MLflow run this folder's training logs to (cprec_core.tracking): a resumed
        run continues it."""
        return self.path / "mlflow_run.json"

    @property
    def scratch(self) -> Path:
        """Where the final files are written before they are renamed into place."""
        return self.path / ".final.tmp"

    def exists(self) -> bool:
        return self.adapter_weights.is_file()

    def read_manifest(self) -> RunManifest:
        """The run's manifest; a damaged one is an error naming the file."""
        try:
            return RunManifest.from_json(self.manifest.read_text())
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise LayoutError(f"{self.manifest}: not a run manifest ({exc})") from exc

    def write_manifest(self, manifest: RunManifest) -> None:
        """Written beside and renamed over the old one: a reader finds one whole file."""
        staged = self.path / ".manifest.json.tmp"
        staged.write_text(manifest.to_json())
        os.replace(staged, self.manifest)


@dataclass(frozen=True)
class RunManifest:
    """What a finished LoRA run (CPT, SFT or DPO) says about itself, its ``manifest.json``.

    One flat record for the three trainers: the fields every run has, then each kind's own
    (None where the kind has none). ``from_json`` reads older files too: a field they lack
    takes its default (an SFT run before ``objective`` was written trained ``ntp``), a key
    this version does not know is kept in ``extra`` and written back unchanged."""

    kind: str  # "cpt", "sft" or "dpo"
    base_model: str = ""
    steps: int = 0
    config: dict = field(default_factory=dict)
    final_loss: float | None = None
    tokens: int = 0
    tokens_per_second: float | None = None
    train_seconds: float = 0.0
    trainable_parameters: int | None = None
    dtype: str | None = None
    processor: str | None = None
    git_revision: str | None = None
    # CPT
    variant: str | None = None
    profile: str | None = None
    corpus_fingerprint: str | None = None
    plan_fingerprint: str | None = None
    phase_steps: dict | None = None
    documents: int | None = None
    block_fill: float | None = None
    device: str | None = None
    processes: int | None = None
    memory_estimate_gib: float | None = None
    torch: str | None = None
    reused_from: str | None = None  # a finished run of the same plan, copied (cpt.reuse_from)
    # SFT and DPO
    system: str | None = None
    domain: str | None = None  # the display name; ``partition`` is the key
    partition: str | None = None
    seed: int | None = None
    data_version: str | None = None
    objective: str = "ntp"  # ntp, rank (candidate-aware), residual or dpo
    listing: bool | None = None
    fingerprint: str | None = None
    init_adapter: str | None = None  # the CPT adapter its LoRA started from (None: fresh)
    init_manifest: str | None = None  # that CPT run's corpus fingerprint
    samples: int | None = None
    epochs: int | None = None
    schedule: str | None = None  # "constant" (a short run) or "warmup-cosine"
    validation: dict | None = None  # the validation row of the weights saved
    scoring: str | None = None  # "sum", "mean" (the better on validation) or "residual"
    # a residual system's classic partner, its seed, every partner's validation MRR, the gate
    residual: dict | None = None
    validation_curve: list = field(default_factory=list)
    injection: dict | None = None
    hybrid_steps: int | None = None
    placeholder_id: int | None = None
    # DPO
    sft_system: str | None = None
    sft_adapter: str | None = None
    sft_fingerprint: str | None = None
    pairs: str | None = None
    pairs_sha256: str | None = None
    pair_summary: dict | None = None
    windows: int | None = None
    mlflow_run_id: str | None = None  # the MLflow run it logged to (None: tracking off or down)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "extra" and getattr(self, f.name) is not None}
        return {**out, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunManifest:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "kind"}
        values = {k: v for k, v in raw.items() if k in known}
        kind = raw.get("kind") or ("cpt" if "variant" in raw else
                                   "dpo" if raw.get("objective") == "dpo" else "sft")
        return cls(kind=kind, **values,
                   extra={k: v for k, v in raw.items() if k not in known and k != "kind"})

    @classmethod
    def from_json(cls, text: str) -> RunManifest:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> RunManifest:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class NextItemFiles:
    """A trained SASRec or GRU4Rec: weights, the item index (position j holds the global id
    of item j + 1) and the manifest."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def item_index(self) -> Path:
        return self.path / "item_index.json"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    @property
    def curves(self) -> Path:
        """Loss and validation metrics per epoch (written where the run is tracked)."""
        return self.path / "curves.png"

    def exists(self) -> bool:
        return self.weights.is_file()


@dataclass(frozen=True)
class ItemEmbeddingFiles:
    """Every item's title embedded by one source of weights (the base model or a CPT
    adapter): ``embeddings.safetensors`` holds ``embeddings`` (items x model width, fp32) and
    ``item_idx`` (the global id of each row); the manifest names the model, the adapter's
    fingerprint, the pooling and what it cost."""

    path: Path

    @property
    def weights(self) -> Path:
        return self.path / "embeddings.safetensors"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    def exists(self) -> bool:
        return self.weights.is_file() and self.manifest.is_file()


@dataclass(frozen=True)
class RecommendationFiles:
    """One domain's exported recommendations: immutable snapshots, each a pair of Parquet
    files named by its version, and ``current.json`` naming the newest. A snapshot is written
    in full before ``current.json`` is atomically replaced, so a reader (the HTTP service)
    always sees a whole snapshot and picks up the next one without a restart."""

    path: Path

    @property
    def current(self) -> Path:
        """JSON: version, file names, model and data versions of the served snapshot."""
        return self.path / "current.json"

    def recommendations(self, version: str) -> Path:
        return self.path / f"recommendations-{_part(version, 'snapshot version')}.parquet"

    def items(self, version: str) -> Path:
        """The domain's items (item_idx, item_id, title) as that snapshot knew them."""
        return self.path / f"items-{_part(version, 'snapshot version')}.parquet"


@dataclass(frozen=True)
class Layout:
    """Paths of one profile (``name``) under ``data_dir``."""

    data_dir: Path
    name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", check_folder(self.data_dir))
        _part(self.name, "profile name (lower-case letters, digits, '-' and '_')")

    @property
    def root(self) -> Path:
        return self.data_dir / self.name

    @property
    def cache_dir(self) -> Path:
        """Shared between profiles: fetched wheels, extracted data sets, converted models."""
        return self.data_dir / "cache"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "landing"

    @property
    def database(self) -> Path:
        return self.root / "cprec.duckdb"

    @property
    def corpus_dir(self) -> Path:
        """The corpus snapshot training reads, outside the database."""
        return self.root / "corpus"

    @property
    def corpus_parquet(self) -> Path:
        return self.corpus_dir / "cpt_corpus.parquet"

    @property
    def corpus_items(self) -> Path:
        return self.corpus_dir / "items.parquet"

    @property
    def corpus_info(self) -> Path:
        return self.corpus_dir / "corpus_info.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.corpus_dir / "tokenizer"

    @property
    def tokenizer_config(self) -> Path:
        """Written by transformers' ``save_pretrained``: the snapshot has a tokenizer."""
        return self.tokenizer_dir / "tokenizer_config.json"

    @property
    def mlflow_dir(self) -> Path:
        """The local MLflow store (cprec_core.tracking): ``mlflow.db`` and ``artifacts/``."""
        return self.root / "mlflow"

    @property
    def mlflow_db(self) -> Path:
        return self.mlflow_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.mlflow_dir / "artifacts"

    @property
    def leaderboard_markdown(self) -> Path:
        """The leaderboard asset's tables (also an artifact of its MLflow run)."""
        return self.root / "leaderboard.md"

    @property
    def leaderboard_chart(self) -> Path:
        return self.root / "leaderboard.png"

    @property
    def scaling_dir(self) -> Path:
        """The CPT scaling curve (cprec_core.training.cpt_scaling): its run, one adapter per
        token budget, their item embeddings and text SASRec models."""
        return self.root / "scaling"

    @property
    def scaling_curve(self) -> Path:
        return self.scaling_dir / "curve.json"

    @property
    def scaling_plot(self) -> Path:
        return self.scaling_dir / "curve.png"

    def cpt_adapter(self, variant: str) -> TrainedAdapter:
        return TrainedAdapter(self.root / "cpt" / _part(variant, "CPT variant name"))

    def sft_run(self, system: str, slug: str, seed: int) -> TrainedAdapter:
        if int(seed) < 0:
            raise LayoutError(f"seed {seed} is negative")
        return TrainedAdapter(self.root / "sft" / _part(system, "system name")
                              / check_partition_key(slug) / f"seed-{int(seed)}")

    def lever_run(self, lever: str, system: str, slug: str, seed: int) -> TrainedAdapter:
        """An SFT run trained beside the study's by a lever benchmark (benchmarks/), never
        read by the evaluation."""
        own = self.sft_run(system, slug, seed)  # checks the names
        return TrainedAdapter(self.root / "levers" / _part(lever, "lever name")
                              / own.path.relative_to(self.root / "sft"))

    def trained_cpt_adapters(self) -> list[TrainedAdapter]:
        """Every CPT run that finished (has a manifest), by variant name."""
        return [TrainedAdapter(m.parent) for m in sorted(self.root.glob("cpt/*/manifest.json"))]

    def trained_sft_runs(self) -> list[TrainedAdapter]:
        """Every SFT run that finished, by system, domain and seed."""
        return [TrainedAdapter(m.parent)
                for m in sorted(self.root.glob("sft/*/*/seed-*/manifest.json"))]

    def next_item_model(self, system: str, slug: str, seed: int = 0) -> NextItemFiles:
        """A next-item system's model (``sasrec``, ``gru4rec``, ``sasrec_text_cpt``, ...)
        for one domain and seed."""
        if int(seed) < 0:
            raise LayoutError(f"seed {seed} is negative")
        return NextItemFiles(self.root / _part(system, "model kind") / check_partition_key(slug)
                             / f"seed-{int(seed)}")

    def item_embeddings(self, source: str) -> ItemEmbeddingFiles:
        """``source``: ``base`` or a CPT variant (cprec_core.systems.EMBEDDING_SOURCES)."""
        return ItemEmbeddingFiles(self.root / "item_embeddings"
                                  / _part(source, "item embedding source"))

    def recommendation_files(self, slug: str) -> RecommendationFiles:
        return RecommendationFiles(self.root / "recommendations" / check_partition_key(slug))
