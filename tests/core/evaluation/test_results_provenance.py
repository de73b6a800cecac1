"""The results file's git line: the tree is checked against the revision the code names."""

import subprocess
from pathlib import Path

import pytest

from cprec_core.evaluation.results import _dirty

ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture
def in_git():
    if _git("rev-parse", "HEAD").returncode != 0:
        pytest.skip("not a git checkout")


def test_named_revision_is_the_one_checked(in_git, monkeypatch):
    # a copied checkout on a GPU machine carried the session's first .git under newer files:
    # its tree must be checked against CPREC_GIT_REVISION, not that stale HEAD
    head = _git("rev-parse", "--short", "HEAD").stdout.strip()
    monkeypatch.delenv("CPREC_GIT_REVISION", raising=False)
    against_head = _dirty()
    monkeypatch.setenv("CPREC_GIT_REVISION", head)
    assert _dirty() == against_head
    first = _git("rev-list", "--max-parents=0", "HEAD").stdout.split()[0]
    if first == _git("rev-parse", "HEAD").stdout.strip():
        return  # a shallow clone holds no older commit
    monkeypatch.setenv("CPREC_GIT_REVISION", first)  # every file changed since the first commit
    assert _dirty() == " (plus uncommitted changes)"


def test_a_revision_git_does_not_hold_is_said_unchecked(in_git, monkeypatch):
    monkeypatch.setenv("CPREC_GIT_REVISION", "0123abc")
    assert _dirty() == " (tree not checked against git)"


def test_processor_is_the_cpu_model_or_the_gpu_name(monkeypatch, tmp_path):
    import torch

    from cprec_core import provenance

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    real_path = provenance.Path
    monkeypatch.setattr(provenance, "Path",
                        lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    assert provenance.processor() == provenance.processor("cpu") == "AMD EPYC"
    if not torch.cuda.is_available():  # a CUDA device named where there is none: the CPU's
        assert provenance.processor("cuda:0") == "AMD EPYC"
    cpuinfo.unlink()  # no /proc (macOS): the platform's own answer, never empty
    assert provenance.processor()
