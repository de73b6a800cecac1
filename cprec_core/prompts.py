"""Prompt rendering. The unified CPT prompt is pure text: no domain words, no ID tokens."""

from __future__ import annotations

from typing import Sequence

from cprec_core.config import CorpusConfig


def render_unified(titles: Sequence[str], cfg: CorpusConfig) -> str:
    """History = every title but the last; the last title is the next-item target.

    >>> render_unified(["A (1990)", "B (1991)", "C (1992)"], CorpusConfig())
    'This user has bought A (1990), B (1991) in the previous. Please predict the next item this user will buy. C (1992)'
    """
    if len(titles) < 2:
        raise ValueError("a unified prompt needs at least one history item and a next item")
    history = cfg.separator.join(titles[:-1])
    return cfg.template.replace("{history}", history).replace("{next}", titles[-1])
