"""What the SFT and DPO trainers share, as pieces rather than a base class: a domain's
inputs (titles, SASRec item table, validation sample, users), the checks before any weight
is read, the base model with its item placeholder, validation scoring through the tree
forward, and writing the adapter with its projector.

The helpers that take ``trainer`` read these attributes of it: ``accelerator``, ``model``
(the prepared ``HybridLM``), ``peft_model``, ``projector``, ``sharded`` (under FSDP),
``inputs`` (``DomainInputs``), ``tokenizer``, ``placeholder_id``, ``listing``,
``candidate_vectors``, ``device``,
``dtype``, ``answers`` (answer token ids by item), ``reporter`` and ``label``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import torch
from safetensors.torch import save_file

from cprec_core.config import Profile
from cprec_core.data.cases import load_cases
from cprec_core.data.db import connect
from cprec_core.data.domain_users import DomainData, load_domain_data
from cprec_core.layout import RunManifest, TrainedAdapter
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import add_placeholder_token, collab_inputs, injection_diagnostics
from cprec_core.models.loader import load_base_model
from cprec_core.models.quantization import (QuantizationError, check_quantization,
                                            prepare_for_training)
from cprec_core.progress import Progress
from cprec_core.prompts import Case
from cprec_core.training import checkpointing, distributed
from cprec_core.training.loop import autocast, publish_run
from cprec_core.training.next_item import load_next_item_model
from cprec_core.training.rank_loss import rank_batch, validation_report


class SFTError(RuntimeError):
    """SFT or DPO cannot start: missing inputs (SASRec, an adapter), too small a domain."""


@dataclass(frozen=True)
class DomainInputs:
    """One target domain as SFT and DPO read it."""

    partition: str  # the key (``crime``)
    domain: str  # the display name (``Crime``)
    data: DomainData
    titles: dict[int, str]
    validation: list[Case]  # the fixed validation sample; empty without candidate sets
    item_table: torch.Tensor  # SASRec item embeddings: row j + 1 is item index[j]
    local: dict[int, int]  # global item id -> its row in ``item_table``

    @property
    def data_version(self) -> str:
        return self.data.data_version


def load_domain_inputs(profile: Profile, partition: str, standardise: bool, log
                       ) -> DomainInputs:
    """The domain's users, titles and validation sample, and its SASRec's item table
    (standardised for the candidate-aware objective: cprec_core.models.hybrid)."""
    files = profile.layout.next_item_model("sasrec", partition)
    if not files.exists():
        raise SFTError(f"{files.path}: no SASRec for domain {partition!r}; materialise"
                       " sasrec first")
    sasrec, index = load_next_item_model(files)
    with connect(profile.layout.database, read_only=True) as con:  # waits for a writer
        data = load_domain_data(con, partition)
        titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                  [data.domain]).fetchall())
        validation = validation_cases(con, profile, data.domain, log)
    return DomainInputs(partition, data.domain, data, titles, validation,
                        collab_inputs(sasrec.item_embeddings(), standardise),
                        {item: j + 1 for j, item in enumerate(index)})


def validation_cases(con, profile: Profile, domain: str, log) -> list[Case]:
    """The stored validation candidate sets as cases: every one, or a fixed sample of
    ``sft.validation_cases`` (the evaluation's seed); none where they are missing."""
    try:
        cases = load_cases(con, domain, "valid", profile.sft.validation_cases,
                           profile.evaluation.seed)
    except (ValueError, duckdb.CatalogException):
        log(f"{domain}: no validation candidate sets, no validation scoring")
        return []
    return cases.prompt_cases(profile.sft.history)


def check_launch(accelerator, trainer: str, profile: Profile) -> None:
    """Before any weight is read: the processes sharded only where ``trainer`` supports
    it (SFT does, DPO runs under DDP: cprec_core.training.distributed), and
    ``model.quantization`` possible here."""
    if distributed.uses_fsdp(accelerator) and trainer not in distributed.SHARDED_TRAINERS:
        raise SFTError(f"{trainer.upper()} does not run under FSDP: launch it with"
                       " cprec_core/training/accelerate/ddp.yaml (accelerate_config_file)")
    try:
        check_quantization(profile.model.quantization, str(accelerator.device))
    except QuantizationError as exc:
        raise SFTError(str(exc)) from exc


def load_base(profile: Profile, tokenizer, dtype: torch.dtype, device) -> tuple:
    """(the base model ready for LoRA training, the id of its item placeholder token)."""
    model = profile.model
    base = load_base_model(model.name, profile.layout.cache_dir, dtype, tokenizer,
                           model.trust_remote_code, model.quantization, device,
                           allow_pickle=model.allow_pickle_weights)
    base = prepare_for_training(base, model.quantization, False)
    return base, add_placeholder_token(tokenizer, base)


def injection(trainer) -> dict:
    """What the injected vectors carry (cprec_core.models.hybrid.injection_diagnostics)."""
    embeddings = trainer.peft_model.get_base_model().get_input_embeddings().weight
    return injection_diagnostics(trainer.projector, trainer.inputs.item_table, embeddings)


def candidate_batch(trainer, cases: list[Case], hybrid: bool):
    """The tree-forward batch of ``cases`` (cprec_core.training.rank_loss.rank_batch)."""
    return rank_batch(cases, trainer.inputs.titles, trainer.tokenizer, trainer.placeholder_id,
                      trainer.inputs.local, hybrid, trainer.listing, trainer.device,
                      trainer.answers, trainer.candidate_vectors)


def classic_scores(trainer, cases: list[Case]) -> torch.Tensor | None:
    """The residual partner's (B, K) scores of ``cases`` (None: not a residual system,
    cprec_core.training.residual)."""
    if trainer.partner is None:
        return None
    return torch.as_tensor(trainer.partner.scores(cases), device=trainer.device)


@torch.no_grad()
def validate(trainer, micro_batch: int) -> dict | None:
    """Scores of the validation sample with the system's own prompt (hybrid), from the
    tree forward: HR@1 and MRR by summed and by mean log-likelihood (and a residual
    system's own scores), the loss per answer at the learned temperature
    (rank_loss.validation_report)."""
    cases = trainer.inputs.validation
    if not cases:
        return None
    base = trainer.peft_model.get_base_model()
    before = base.config._attn_implementation
    base.set_attn_implementation(TREE_ATTENTION)
    trainer.model.eval()
    summed, ranking, calibrated, tokens, target = [], [], [], [], []
    progress = Progress(trainer.reporter.log, f"{trainer.label} validation", len(cases))
    try:
        for i in range(0, len(cases), micro_batch):
            part = cases[i:i + micro_batch]
            batch = candidate_batch(trainer, part, True)
            classic = classic_scores(trainer, part)
            with autocast(trainer.device, trainer.dtype):
                scores, ranked, scaled = trainer.model(candidates=batch.inputs, hybrid=True,
                                                       calibrated=True, classic=classic)
            summed.append(scores.float().cpu())
            ranking.append(ranked.float().cpu())
            calibrated.append(scaled.float().cpu())
            tokens.append(batch.answer_tokens.cpu())
            target.append(batch.target_index.cpu())
            progress.update(min(i + micro_batch, len(cases)))
    finally:
        trainer.model.train()
        base.set_attn_implementation(before)
    residual = torch.cat(ranking).numpy() if trainer.partner is not None else None
    return validation_report(torch.cat(summed).numpy(), torch.cat(tokens).numpy(),
                             torch.cat(target).numpy(), torch.cat(calibrated).numpy(), residual)


def without_per_case(row: dict | None) -> dict | None:
    """A validation row as the manifest keeps it: the per-case values stay in the log."""
    return None if row is None else {k: v for k, v in row.items() if k != "per_case"}


def projector_weights(trainer) -> dict[str, torch.Tensor]:
    """The projector's weights in fp32 (under FSDP gathered whole: a collective)."""
    state = (trainer.projector.state_dict() if trainer.sharded is None
             else trainer.sharded.extra())
    return {k: v.float() for k, v in state.items()}


def trained_weights(trainer) -> tuple[dict | None, dict[str, torch.Tensor]]:
    """(the adapter gathered whole under FSDP, else None: peft saves its own; the
    projector's weights). Under FSDP a collective: every process calls it."""
    adapter = None if trainer.sharded is None else trainer.sharded.adapter()
    return adapter, projector_weights(trainer)


def write_adapter(peft_model, folder: Path, adapter: dict | None) -> None:
    if adapter is None:
        peft_model.save_pretrained(folder, save_embedding_layers=False)
    else:
        checkpointing.write_adapter(peft_model, folder, adapter)


def publish(trainer, manifest: RunManifest) -> None:
    """The trained adapter and projector, then the manifest, into ``trainer.run`` (every
    process calls it: gathering is a collective under FSDP; the main one writes)."""
    adapter, projector = trained_weights(trainer)
    if trainer.accelerator.is_main_process:
        def write(staged: TrainedAdapter) -> None:
            write_adapter(trainer.peft_model, staged.adapter, adapter)
            save_file(projector, staged.projector)

        publish_run(trainer.run, write, manifest)
