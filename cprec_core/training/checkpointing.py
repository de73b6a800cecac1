"""Checkpoints shared by the trainers: one folder per step, written atomically, verified on
load, with a fallback to the previous one when the newest is damaged.

``checkpoints/step-NNNNNN/`` holds the peft adapter (``adapter/``), ``optimizer.pt``,
``scheduler.pt``, ``rng_state.pt`` (python, numpy, torch and any extra generators), optional
extra tensors (``extra.safetensors``, e.g. LLaRA's projector), ``trainer_state.json`` (step
and the fingerprint of what is being trained) and ``checksums.json`` (size and sha256 of
every other file). Everything is loaded with ``weights_only=True`` or from safetensors: a
checkpoint folder is never trusted to run code.

Writing (``save``): every file goes into ``.step-NNNNNN.tmp/`` and is fsynced,
``checksums.json`` is written last, then the folder is renamed to ``step-NNNNNN`` (and the
parent fsynced). A crash mid-save leaves only the ``.tmp`` folder, which is never loaded and
is removed by the next ``load``. The newest ``KEEP_CHECKPOINTS`` folders are kept.

Loading (``load``): the newest folder is verified (``checksums.json``, then every file is
read into memory and parsed, before any of it touches the model) and applied all or
nothing: if applying fails half-way, the trainer's state is put back as it was. A damaged
checkpoint is logged with the file and the reason ("checkpoint step-000008 damaged:
optimizer.pt: ...; falling back to step-000004") and the next older one is tried; when none
is left, training starts over from step 0 (logged), from exactly the state a fresh run has.

Damaged folders are moved to ``checkpoints/damaged/`` rather than deleted or left in place:
left in place they would be retried (and reported) on every restart and would count as one
of the ``KEEP_CHECKPOINTS`` kept ones, pushing an intact checkpoint out at the next save;
deleted, the evidence of a disk or copy problem would be gone. One folder per step name is
kept there (a later damage of the same step replaces it); it goes with the checkpoints when
a changed plan discards them.

Under FSDP (``ShardedModel``) the LoRA weights, the optimiser state and any extra trainable
module (SFT's projector) are sharded over the processes: every process takes part in
gathering them whole (trainable tensors only, on CPU) before the main one writes the usual
files, and in scattering them back on resume. The adapter files are the same as a single
process writes; ``optimizer.pt`` is then keyed by parameter name (torch.distributed.
checkpoint's form), so a checkpoint resumes under the sharding that wrote it (another one
finds it unusable, logs it and starts over).

Checkpoints written before ``checksums.json`` existed are still loaded: with no checksums to
compare, every file is read and parsed in full, which catches truncation (safetensors and
torch's zip format check their own lengths, JSON must parse), though not a flipped byte in
a tensor. Their resume is logged as unchecksummed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = f"{ADAPTER_DIR}/adapter_model.safetensors"
ADAPTER_CONFIG = f"{ADAPTER_DIR}/adapter_config.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "trainer_state.json"
CHECKSUMS_FILE = "checksums.json"
DAMAGED_DIR = "damaged"
KEEP_CHECKPOINTS = 2
REQUIRED = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, OPTIMIZER_FILE, SCHEDULER_FILE, RNG_FILE,
            STATE_FILE)

# what reading or applying a damaged file raises (torch.load, safetensors, json, state dicts)
LOAD_ERRORS = (OSError, EOFError, RuntimeError, ValueError, KeyError, IndexError, TypeError,
               AttributeError, pickle.UnpicklingError, zipfile.BadZipFile, SafetensorError)


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be loaded: ``file`` (relative to the folder) and why."""

    def __init__(self, folder: Path, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.folder, self.file, self.reason = folder, file, reason


@dataclass
class Checkpoint:
    """A checkpoint read into memory (nothing applied yet)."""

    folder: Path | None
    state: dict
    adapter: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict
    extra: dict[str, torch.Tensor]
    checksummed: bool = True

    @property
    def step(self) -> int:
        return self.state["step"]


# -- writing ---------------------------------------------------------------------------------
def _np_state(state) -> list:
    return [state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]]


def _np_restore(saved) -> tuple:
    kind, keys, *rest = saved
    return (kind, keys.numpy().astype(np.uint32), *rest)


def _rng_state(generators: dict[str, np.random.Generator] | None) -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": _np_state(np.random.get_state()),
            "generators": {k: json.dumps(g.bit_generator.state)
                           for k, g in (generators or {}).items()}}


def _fsync(path: Path) -> None:
    """Flush a file or a folder to disk (folders: where the platform allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def save(root: Path, step: int, state: dict, peft_model, optimizer, scheduler,
         extra: dict[str, torch.Tensor] | None = None,
         generators: dict[str, np.random.Generator] | None = None,
         gathered: tuple[dict, dict] | None = None) -> Path:
    """Writes the checkpoint of ``step`` (``state`` joins the step in trainer_state.json)
    into a temporary folder, fsynced, with checksums.json last, and renames it into place;
    keeps the newest ``KEEP_CHECKPOINTS``. ``gathered``: the LoRA and optimiser states
    ``ShardedModel.gather`` collected (FSDP), written instead of the model's own."""
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if gathered is None:
        peft_model.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
    else:
        write_adapter(peft_model, tmp / ADAPTER_DIR, gathered[0])
    torch.save(optimizer.state_dict() if gathered is None else gathered[1], tmp / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    torch.save(_rng_state(generators), tmp / RNG_FILE)
    if extra:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, tmp / EXTRA_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}))
    files = {}
    for name in _files(tmp):
        _fsync(tmp / name)
        files[name] = {"size": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
    with open(tmp / CHECKSUMS_FILE, "w") as fh:  # last: its presence means all is written
        fh.write(json.dumps({"files": files}, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    for folder in {(tmp / name).parent for name in files} | {tmp}:
        _fsync(folder)
    final = root / f"step-{step:06d}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _fsync(root)
    for old in checkpoint_folders(root)[KEEP_CHECKPOINTS:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# -- reading ---------------------------------------------------------------------------------
def checkpoint_folders(root: Path) -> list[Path]:
    """The ``step-*`` folders, newest first."""
    return sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0].split(". ")[0] if text else ""  # torch's first sentence says it all
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def verify(folder: Path) -> bool:
    """Checks every file against ``checksums.json``; False where there is none (written by
    an older version). Raises DamagedCheckpoint naming the first bad file."""
    listing = folder / CHECKSUMS_FILE
    if not listing.exists():
        return False
    try:
        files = json.loads(listing.read_text())["files"]
        entries = {str(name): (int(e["size"]), str(e["sha256"])) for name, e in files.items()}
    except LOAD_ERRORS as exc:
        raise DamagedCheckpoint(folder, CHECKSUMS_FILE, _reason(exc)) from exc
    for name in REQUIRED:
        if name not in entries:
            raise DamagedCheckpoint(folder, name, f"not listed in {CHECKSUMS_FILE}")
    for name, (size, digest) in sorted(entries.items()):
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise DamagedCheckpoint(folder, CHECKSUMS_FILE, f"lists a path outside: {name}")
        if not path.is_file():
            raise DamagedCheckpoint(folder, name, "missing")
        actual = path.stat().st_size
        if actual != size:
            raise DamagedCheckpoint(folder, name, f"{actual} bytes, {size} were written"
                                    + (" (truncated)" if actual < size else ""))
        if _sha256(path) != digest:
            raise DamagedCheckpoint(folder, name, f"sha256 differs from {CHECKSUMS_FILE}")
    return True


def _read(folder: Path, name: str, reader: Callable[[Path], object]):
    try:
        return reader(folder / name)
    except LOAD_ERRORS as exc:
        raise DamagedCheckpoint(folder, name, _reason(exc)) from exc


def _torch_load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _json(path: Path) -> dict:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def read(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``, verified and read into memory; raises DamagedCheckpoint."""
    checksummed = verify(folder)
    state = _read(folder, STATE_FILE, _json)
    if not isinstance(state.get("step"), int) or folder.name != f"step-{state['step']:06d}":
        raise DamagedCheckpoint(folder, STATE_FILE, f"step {state.get('step')!r} does not match"
                                                    f" the folder name {folder.name}")
    _read(folder, ADAPTER_CONFIG, _json)  # not applied (the model has its config): checked
    adapter = _read(folder, ADAPTER_WEIGHTS, load_file)
    optimizer = _read(folder, OPTIMIZER_FILE, _torch_load)
    scheduler = _read(folder, SCHEDULER_FILE, _torch_load)
    rng = _read(folder, RNG_FILE, _torch_load)
    for name, value in (("optimizer", optimizer), ("scheduler", scheduler), ("rng", rng)):
        if not isinstance(value, dict):
            file = {"optimizer": OPTIMIZER_FILE, "scheduler": SCHEDULER_FILE}.get(name, RNG_FILE)
            raise DamagedCheckpoint(folder, file, f"holds a {type(value).__name__}, not a dict")
    missing = {"python", "torch", "numpy", "generators"} - set(rng)
    if missing:
        raise DamagedCheckpoint(folder, RNG_FILE, f"no {', '.join(sorted(missing))} state")
    extra = _read(folder, EXTRA_FILE, load_file) if (folder / EXTRA_FILE).exists() else {}
    return Checkpoint(folder, state, adapter, optimizer, scheduler, rng, extra, checksummed)


# -- FSDP -------------------------------------------------------------------------------------
class ShardedModel:
    """The LoRA weights and optimiser state of a model sharded by FSDP, gathered whole and
    scattered back with torch.distributed.checkpoint.state_dict (FSDP1 and FSDP2 alike).
    Built from the wrapper and its peft model *before* ``accelerator.prepare`` (peft names
    the adapter tensors by walking the module tree, which FSDP's wrapped layers hide), then
    ``attach``-ed to the prepared model. Gathering and scattering are collectives: every
    process makes the same calls in the same order."""

    def __init__(self, wrapper: torch.nn.Module, peft_model,
                 extra_module: torch.nn.Module | None = None):
        """``extra_module``: trainable weights outside the adapter (LLaRA's projector),
        gathered and scattered with it, named as its own ``state_dict`` names them."""
        from peft import get_peft_model_state_dict

        self.peft_model = peft_model
        self.prefix = self._prefix(wrapper, peft_model)
        self.extra_prefix = None if extra_module is None else self._prefix(wrapper, extra_module)
        self.extra_names = set() if extra_module is None else set(extra_module.state_dict())
        own = peft_model.state_dict()
        self.names = {}  # name in the peft model -> name in the saved adapter
        for key, param in peft_model.named_parameters():
            if param.requires_grad:
                saved = get_peft_model_state_dict(peft_model, state_dict={key: own[key]},
                                                  save_embedding_layers=False)
                for name in saved:  # its one name in the saved adapter
                    self.names[key] = name
        self.model = None

    @staticmethod
    def _prefix(wrapper: torch.nn.Module, module: torch.nn.Module) -> str:
        name = next(name for name, m in wrapper.named_modules() if m is module)
        return f"{name}." if name else ""

    def attach(self, model: torch.nn.Module) -> "ShardedModel":
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        self.model = model  # as accelerate prepared it
        # gathered into CPU memory from a GPU; on CPU processes FSDP1's offload crashes
        offload = next(model.parameters()).device.type != "cpu"
        self.options = StateDictOptions(full_state_dict=True, cpu_offload=offload,
                                        ignore_frozen_params=True)
        return self

    def adapter(self) -> dict:
        """The adapter whole, named as peft saves it."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.model, options=self.options)
        return {name: full[self.prefix + key].detach().cpu() for key, name in self.names.items()}

    def extra(self) -> dict:
        """The extra module's trainable weights whole, named as its ``state_dict`` does."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.model, options=self.options)
        return {key[len(self.extra_prefix):]: value.detach().cpu() for key, value in full.items()
                if key.startswith(self.extra_prefix)}

    def load_extra(self, state: dict) -> None:
        """Every tensor of the extra module and no other (as ``load_state_dict`` checks)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)

        if set(state) != self.extra_names:
            raise KeyError(f"extra tensors {sorted(set(state) ^ self.extra_names)[:3]} missing"
                           " or unexpected")
        set_model_state_dict(self.model, {self.extra_prefix + k: v for k, v in state.items()},
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def optimizer_state(self, optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, optimizer, options=self.options)

    def gather(self, optimizer) -> tuple[dict, dict]:
        """(adapter, optimiser state), whole, for ``save(gathered=...)``."""
        return self.adapter(), self.optimizer_state(optimizer)

    def load_adapter(self, adapter: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict)

        state = {self.prefix + key: adapter[name] for key, name in self.names.items()}
        set_model_state_dict(self.model, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))

    def load_optimizer(self, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        # not strict: a parameter that has had no gradient yet (the projector before the first
        # hybrid step) has no Adam state, saved or not, as with one process
        options = dataclasses.replace(self.options, strict=False)
        set_optimizer_state_dict(self.model, optimizer, state, options=options)


def write_adapter(peft_model, folder: Path, adapter: dict) -> None:
    """What ``peft_model.save_pretrained`` writes (adapter_model.safetensors and
    adapter_config.json), from tensors gathered by ``ShardedModel``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in adapter.items()},
              folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = peft_model.base_model.model.__dict__.get("name_or_path")
    config.save_pretrained(folder)


# -- applying --------------------------------------------------------------------------------
def _capture(peft_model, optimizer, scheduler, generators, extra_module,
             sharded: ShardedModel | None = None) -> Checkpoint:
    """The trainer's current state, in the form ``read`` returns (for a rollback)."""
    from peft import get_peft_model_state_dict

    if sharded is not None:
        adapter, optimizer_state = sharded.gather(optimizer)
    else:
        adapter = {k: v.detach().clone() for k, v in
                   get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
        optimizer_state = copy.deepcopy(optimizer.state_dict())
    if extra_module is None:
        extra = {}
    elif sharded is not None:
        extra = sharded.extra()
    else:
        extra = {k: v.detach().clone() for k, v in extra_module.state_dict().items()}
    return Checkpoint(None, {"step": 0}, adapter, optimizer_state,
                      copy.deepcopy(scheduler.state_dict()), _rng_state(generators), extra)


def _apply(checkpoint: Checkpoint, peft_model, optimizer, scheduler, generators,
           extra_module, sharded: ShardedModel | None = None) -> None:
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    folder = checkpoint.folder
    current = ADAPTER_WEIGHTS
    try:
        expected = (get_peft_model_state_dict(peft_model, save_embedding_layers=False)
                    if sharded is None else sharded.adapter())
        if set(expected) != set(checkpoint.adapter):
            raise KeyError(f"tensors {sorted(set(expected) ^ set(checkpoint.adapter))[:3]}"
                           " missing or unexpected")
        for key, value in expected.items():
            if tuple(value.shape) != tuple(checkpoint.adapter[key].shape):
                raise ValueError(f"{key}: shape {tuple(checkpoint.adapter[key].shape)}, the"
                                 f" model has {tuple(value.shape)}")
        if extra_module is not None:
            current = EXTRA_FILE
            if not checkpoint.extra:
                raise FileNotFoundError("missing")
        current = OPTIMIZER_FILE  # validates everything before it changes anything
        if sharded is None:
            optimizer.load_state_dict(checkpoint.optimizer)
        else:
            sharded.load_optimizer(optimizer, checkpoint.optimizer)
        current = SCHEDULER_FILE
        missing = set(scheduler.state_dict()) - set(checkpoint.scheduler)
        if missing:
            raise KeyError(f"no {', '.join(sorted(missing))}")
        scheduler.load_state_dict(checkpoint.scheduler)
        current = ADAPTER_WEIGHTS
        if sharded is None:
            set_peft_model_state_dict(peft_model, checkpoint.adapter)
        else:
            sharded.load_adapter(checkpoint.adapter)
        current = RNG_FILE
        rng = checkpoint.rng
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        np.random.set_state(_np_restore(rng["numpy"]))
        for name, generator in (generators or {}).items():
            generator.bit_generator.state = json.loads(rng["generators"][name])
        if extra_module is not None:
            current = EXTRA_FILE
            if sharded is None:
                extra_module.load_state_dict(checkpoint.extra)  # strict: every tensor, no other
            else:
                sharded.load_extra(checkpoint.extra)
    except LOAD_ERRORS as exc:
        raise DamagedCheckpoint(folder, current, _reason(exc)) from exc


def restore(checkpoint: Checkpoint, peft_model, optimizer, scheduler,
            generators: dict[str, np.random.Generator] | None = None,
            extra_module: torch.nn.Module | None = None,
            sharded: ShardedModel | None = None) -> None:
    """Adapter weights, optimiser, scheduler, RNGs and (``extra_module``) the extra tensors,
    all or nothing: on DamagedCheckpoint everything is as it was before the call.
    ``sharded``: the model is under FSDP (every process calls this together)."""
    before = _capture(peft_model, optimizer, scheduler, generators, extra_module, sharded)
    try:
        _apply(checkpoint, peft_model, optimizer, scheduler, generators, extra_module, sharded)
    except DamagedCheckpoint:
        _apply(before, peft_model, optimizer, scheduler, generators, extra_module, sharded)
        raise


def set_aside(folder: Path) -> Path:
    """Moves a damaged checkpoint to ``damaged/`` beside it (see the module docstring)."""
    target = folder.parent / DAMAGED_DIR / folder.name
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    return target


def load(root: Path, plan: str, apply: Callable[[Checkpoint], None],
         log: Callable[[str], None], main: bool = True,
         barrier: Callable[[], None] | None = None) -> Checkpoint | None:
    """Applies the newest intact checkpoint of ``plan`` through ``apply`` (which raises
    DamagedCheckpoint, having changed nothing, when it cannot) and returns it; None: start
    from step 0. Damaged checkpoints are logged and the next older one is tried; checkpoints
    of another plan (``state["plan"]``) discard the whole folder. Every process walks the
    same folders; after ``barrier`` only the main one moves or removes anything."""
    folders = checkpoint_folders(root) if root.is_dir() else []
    damaged: list[Path] = []
    found, foreign = None, False
    for i, folder in enumerate(folders):
        try:
            checkpoint = read(folder)
            if checkpoint.state.get("plan") != plan:  # corpus, config or model changed
                log(f"checkpoints in {root} are from another plan"
                    f" ({checkpoint.state.get('plan')} != {plan}): starting over")
                foreign = True
                break
            apply(checkpoint)
        except DamagedCheckpoint as exc:
            damaged.append(folder)
            then = (f"falling back to {folders[i + 1].name}" if i + 1 < len(folders) else
                    "no intact checkpoint left: starting over from step 0")
            log(f"checkpoint {folder.name} damaged: {exc}; {then}")
            continue
        found = checkpoint
        log(f"resumed from {folder} (step {checkpoint.step})" + (
            "" if checkpoint.checksummed else f"; it has no {CHECKSUMS_FILE} (an older"
            " version's checkpoint): checked by reading every file"))
        break
    if barrier is not None and folders:
        barrier()
    if main and root.is_dir():
        if foreign:
            shutil.rmtree(root)
            return None
        for folder in damaged:
            log(f"moved damaged {folder.name} to {set_aside(folder)}")
        for partial in root.glob(".step-*.tmp"):  # a save that did not finish
            shutil.rmtree(partial, ignore_errors=True)
    return found
