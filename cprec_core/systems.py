"""The one registry of CPT variants and recommender systems.

A system's name is what the evaluation tables, the leaderboard and the config's
``sft.systems`` say; its entry tells which asset produces its weights, which CPT adapter its
LoRA starts from, which prompt it reads and where it sits in the leaderboard. The Dagster
assets (their names and the evaluation's upstream), the trainers, the scorer and the
leaderboard all read it, so adding a variant or a system is one entry here
(docs/ARCHITECTURE.md, "Where to make a change").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CPTVariant:
    """A CPT schedule and data order (cprec_core.training.cpt_plan builds its plan)."""

    name: str
    description: str
    automated: bool = False  # re-trained by the automation conditions (else by hand)
    in_paper: bool = True  # the paper's variants and ablations (the studies that rerun it)

    @property
    def asset(self) -> str:
        return "cpt_adapter" if self.name == "wsa" else f"cpt_adapter_{self.name}"


CPT_VARIANTS: tuple[CPTVariant, ...] = (
    CPTVariant("wsa", "warmup and stable on domain-specific sequences, annealing on mixed",
               automated=True),
    CPTVariant("ds_only", "the same LR shape on domain-specific sequences only"),
    CPTVariant("ds_mix_shuffled", "both kinds shuffled together, warmup then cosine"),
    CPTVariant("shuffled_control", "WSA on a corpus whose items are shuffled across users"),
    CPTVariant("wsa_target", "WSA whose domain-specific phase also reads the target domains'"
                             " train sequences (never validation or test)", in_paper=False),
)
CPT_VARIANT_NAMES = tuple(v.name for v in CPT_VARIANTS)
PAPER_VARIANT_NAMES = tuple(v.name for v in CPT_VARIANTS if v.in_paper)


@dataclass(frozen=True)
class System:
    """A recommender scored on the candidate sets.

    kind: ``classic`` (scores from interactions or a next-item model), ``text`` (a next-item
    model whose item table adds a language model's title embeddings to its ID embeddings,
    cprec_core.models.text_items), ``zero_shot`` (an LLM
    without SFT, text prompt), ``sft`` (an SFT adapter, LLaRA's hybrid prompt), ``dpo`` (an
    SFT adapter after preference post-training, cprec_core.training.dpo) or ``fused`` (a
    classic system's and an SFT system's scores combined in the evaluation).
    asset: the asset that produces its weights (None: computed in the evaluation itself).
    cpt_variant: the CPT adapter its LoRA starts from (None: the base model / fresh LoRA).
    all_seeds: trained and scored for every seed of ``sft.seeds`` (else the first only).
    objective: how an SFT system learns: ``ntp`` (LLaRA's next-token loss on the target
    title, the paper's recipe) or ``rank`` (softmax over the candidates' summed
    log-likelihoods plus a weighted next-token loss, cprec_core.training.rank_loss), which
    also standardises the SASRec inputs of the projector (cprec_core.models.hybrid), or
    ``residual`` (the candidate-aware loss on z(classic score) + g * z(LLM score): the
    classic model frozen, the LLM learning what it adds, cprec_core.training.residual), or
    ``dpo`` (the preference loss, from the SFT system ``sft_init``, whose prompt and inputs
    it keeps).
    sft_init: a ``dpo`` system's starting point and frozen reference.
    next_item: the sequence encoder of a next-item system (``sasrec`` or ``gru4rec``; None
    for the others), trained by cprec_core.training.next_item for every seed of its config.
    item_source: a ``text`` system's item embeddings: ``base`` (the base model) or the CPT
    variant whose adapter embedded the titles (cprec_core.embeddings.item_embeddings).
    shuffled_vectors: a ``text`` system's ablation arm: the vectors permuted among the
    domain's items (ItemVectors.shuffled), so none says its own title.
    """

    name: str
    kind: str
    asset: str | None = None
    cpt_variant: str | None = None
    all_seeds: bool = False
    automated: bool = False
    objective: str = "ntp"
    sft_init: str | None = None
    next_item: str | None = None
    item_source: str | None = None
    shuffled_vectors: bool = False

    @property
    def ranks_candidates(self) -> bool:
        """Trained with the candidate-aware objective (and standardised SASRec inputs), or
        post-trained from a system that was."""
        if self.sft_init is not None:
            return _BY_NAME[self.sft_init].ranks_candidates
        return self.objective in ("rank", "residual")

    @property
    def residual(self) -> bool:
        """Scored as z(classic partner) + g * z(LLM) (cprec_core.training.residual)."""
        return self.objective == "residual"

    @property
    def pairs_asset(self) -> str | None:
        """A DPO system's mined preference pairs (``dpo_pairs`` for ``dpo_adapter``)."""
        return self.asset.removesuffix("_adapter") + "_pairs" if self.kind == "dpo" else None

    @property
    def is_cprec(self) -> bool:
        """Built on continual pre-training (compared against the best system that is not)."""
        return self.cpt_variant is not None


# The sources of LLM item embeddings: the base model, and each CPT variant's adapter
EMBEDDING_SOURCES = ("base", *CPT_VARIANT_NAMES)
# How a text system's name says its source: sasrec_text_cpt reads the WSA adapter's
TEXT_SOURCE_NAMES = {"base": "base", "wsa": "cpt", "shuffled_control": "control",
                     "wsa_target": "cpt_target"}


def embedding_asset(source: str) -> str:
    """The asset that embeds every item's title with ``source``'s weights."""
    if source not in EMBEDDING_SOURCES:
        raise KeyError(f"unknown item embedding source {source!r}; known: {EMBEDDING_SOURCES}")
    return f"item_embeddings_{source}"


def _text(encoder: str, source: str, shuffled: bool = False) -> System:
    name = f"{encoder}_text_{TEXT_SOURCE_NAMES[source]}{'_shuffled' if shuffled else ''}"
    return System(name, "text", name, None if source == "base" else source,
                  all_seeds=True, next_item=encoder, item_source=source,
                  shuffled_vectors=shuffled)


def _sft(name: str, variant: str | None, asset: str, headline: bool = False) -> System:
    return System(name, "sft", asset, variant, all_seeds=headline, automated=headline)


def _rank(name: str, variant: str | None, asset: str, headline: bool = False,
          objective: str = "rank") -> System:
    return System(name, "sft", asset, variant, all_seeds=headline, automated=headline,
                  objective=objective)


SYSTEMS: tuple[System, ...] = (  # in leaderboard order
    System("random", "classic"),
    System("popularity", "classic"),
    System("item-knn (domain)", "classic"),
    System("item-knn (all domains)", "classic"),
    System("sasrec", "classic", "sasrec", all_seeds=True, automated=True, next_item="sasrec"),
    System("gru4rec", "classic", "gru4rec", all_seeds=True, automated=True, next_item="gru4rec"),
    # next-item models reading LLM title embeddings (item_text.systems)
    *(_text(encoder, source) for encoder in ("sasrec", "gru4rec") for source in TEXT_SOURCE_NAMES),
    # the ablation that can fail: the base model's vectors shuffled among the items
    _text("sasrec", "base", shuffled=True),
    System("base", "zero_shot"),
    System("cprec_zero_shot", "zero_shot", "cpt_adapter", "wsa"),
    _sft("llara", None, "llara_adapter", headline=True),
    _sft("cprec", "wsa", "sft_adapter", headline=True),
    *(_sft(f"cprec_{v.name}", v.name, f"sft_adapter_{v.name}") for v in CPT_VARIANTS
      if v.name != "wsa"),
    _rank("llara_rank", None, "llara_rank_adapter", headline=True),
    _rank("cprec_rank", "wsa", "sft_rank_adapter", headline=True),
    *(_rank(f"cprec_{v.name}_rank", v.name, f"sft_rank_adapter_{v.name}") for v in CPT_VARIANTS
      if v.name != "wsa"),
    # the LLM as a residual on the better classic model's score (training.residual)
    _rank("llara_residual", None, "llara_residual_adapter", headline=True, objective="residual"),
    _rank("cprec_residual", "wsa", "sft_residual_adapter", headline=True, objective="residual"),
    # DPO after SFT (dpo.systems), from the candidate-aware SFT adapters
    System("llara_dpo", "dpo", "llara_dpo_adapter", None, objective="dpo", sft_init="llara_rank"),
    System("cprec_dpo", "dpo", "dpo_adapter", "wsa", objective="dpo", sft_init="cprec_rank"),
    # best classic + lambda * cprec_rank, lambda picked after training (evaluation.fusion):
    # beside cprec_residual, what learning the combination inside the loss adds
    System("fused", "fused"),
)
_BY_NAME = {s.name: s for s in SYSTEMS}

SFT_SYSTEMS = tuple(s for s in SYSTEMS if s.kind == "sft")
SFT_SYSTEM_NAMES = tuple(s.name for s in SFT_SYSTEMS)
DPO_SYSTEMS = tuple(s for s in SYSTEMS if s.kind == "dpo")
DPO_SYSTEM_NAMES = tuple(s.name for s in DPO_SYSTEMS)
ZERO_SHOT_SYSTEM_NAMES = tuple(s.name for s in SYSTEMS if s.kind == "zero_shot")
NEXT_ITEM_SYSTEMS = tuple(s for s in SYSTEMS if s.next_item)  # classic and text, one file each
NEXT_ITEM_SYSTEM_NAMES = tuple(s.name for s in NEXT_ITEM_SYSTEMS)
TEXT_SYSTEMS = tuple(s for s in SYSTEMS if s.kind == "text")
TEXT_SYSTEM_NAMES = tuple(s.name for s in TEXT_SYSTEMS)
# The leaderboard's paired tests (a, b), each where both were scored; the fused system's
# and residual systems' classic partners and every shuffled-embedding ablation are added
# from the evaluation.
PAIRED_TESTS = (("cprec", "llara"), ("cprec_rank", "cprec"), ("cprec_rank", "llara_rank"),
                ("cprec_residual", "llara_residual"), ("cprec_residual", "cprec_rank"),
                ("cprec_residual", "fused"),
                ("cprec_rank", "cprec_shuffled_control_rank"), ("cprec_dpo", "cprec_rank"),
                ("cprec_dpo", "llara_dpo"),
                # what the LLM's item embeddings buy a sequential recommender, and what CPT adds
                ("sasrec_text_cpt", "sasrec"), ("sasrec_text_cpt", "gru4rec"),
                ("sasrec_text_cpt", "sasrec_text_base"), ("sasrec_text_cpt", "sasrec_text_control"),
                ("sasrec_text_base", "sasrec_text_base_shuffled"),
                ("sasrec_text_cpt", "sasrec_text_base_shuffled"),
                ("sasrec_text_cpt_target", "sasrec_text_cpt"),
                ("sasrec_text_cpt_target", "sasrec"), ("sasrec_text_base", "sasrec"),
                ("gru4rec_text_cpt", "gru4rec"), ("gru4rec_text_cpt", "gru4rec_text_base"))
SHUFFLED_SUFFIX = " (shuffled emb)"  # a hybrid system scored with every vector shuffled
# which injected vectors an ablation run replaces by another item's, and its row's suffix:
# every one, or (systems that read candidate vectors) the history's or the candidates'
SHUFFLES = {"all": SHUFFLED_SUFFIX, "history": " (shuffled history emb)",
            "candidates": " (shuffled candidate emb)"}


def unshuffled(name: str) -> str:
    """The system an ablation row belongs to (``name`` itself when it is none)."""
    for suffix in SHUFFLES.values():
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def is_shuffled(name: str) -> bool:
    return unshuffled(name) != name


def system(name: str) -> System:
    if name not in _BY_NAME:
        raise KeyError(f"unknown system {name!r}; known: {list(_BY_NAME)}")
    return _BY_NAME[name]


def cpt_variant(name: str) -> CPTVariant:
    for variant in CPT_VARIANTS:
        if variant.name == name:
            return variant
    raise KeyError(f"unknown CPT variant {name!r}; known: {list(CPT_VARIANT_NAMES)}")


def is_cprec(name: str) -> bool:
    """Registered systems by their entry; an unknown ``cprec_*`` name (older rows) counts
    too, and so does the fused system (it reads ``cprec_rank``)."""
    if name == "fused":
        return True
    return _BY_NAME[name].is_cprec if name in _BY_NAME else name.startswith("cprec")


def lora_init(name: str) -> str:
    """Where a system's LoRA starts, for tables: ``CPT <variant>`` or ``none``."""
    variant = system(name).cpt_variant
    return f"CPT {variant}" if variant else "none"


def leaderboard_rank(name: str) -> int:
    """Registry order; an ablation row right after its system."""
    names = [s.name for s in SYSTEMS]
    base = unshuffled(name)
    return 2 * (names.index(base) if base in names else len(names)) + (base != name)


def evaluation_inputs() -> tuple[str, ...]:
    """Every asset whose weights some system of the evaluation reads: its upstream."""
    return tuple(dict.fromkeys(s.asset for s in SYSTEMS if s.asset))


def next_item_systems(names) -> list[System]:
    """The next-item systems among ``names`` (classic first, in registry order)."""
    wanted = set(names)
    return [s for s in NEXT_ITEM_SYSTEMS if s.name in wanted]


def automated_assets() -> frozenset[str]:
    """Assets the automation conditions re-train; the others are launched by hand."""
    return frozenset({s.asset for s in SYSTEMS if s.automated and s.asset}
                     | {v.asset for v in CPT_VARIANTS if v.automated})
