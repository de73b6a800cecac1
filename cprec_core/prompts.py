"""Every prompt: the templates, their rendering, the answer format and answer parsing.

Three prompts (method.md sections 1.3 and 2):

* the unified CPT prompt, pure text (no domain words, no ID tokens), for the corpus;
* LLaRA's prompt for SFT and the SFT systems' scoring, in its hybrid form (every item
  written ``Title [emb]``; the placeholder's input embedding is replaced by the projected
  SASRec embedding, cprec_core.models.hybrid) or text-only (the curriculum's other half);
* the zero-shot prompt for the base model and the CPT adapter: the candidate list, then the
  unified prompt up to where the next title goes.

An answer is `` Title`` (then EOS): what SFT trains on and what the scorer's continuations
are; a generated answer is valid iff its first line names exactly one candidate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

UNIFIED_TEMPLATE = (
    "This user has bought {history} in the previous. "
    "Please predict the next item this user will buy. {next}"
)
LLARA_TEMPLATE = (
    "This user has watched {history} in the previous. Given the following {n} movies: "
    "{candidates}, recommend one movie for this user to watch next. The movie title is"
)
# The candidate-aware systems' prompt without the candidate listing (``sft.rank.listing``
# false): the candidates are then only the continuations scored, for a shorter prompt.
LLARA_RANK_TEMPLATE = (
    "This user has watched {history} in the previous. Recommend one movie for this user to"
    " watch next. The movie title is"
)
PLACEHOLDER = "[emb]"
IGNORE = -100  # label of a prompt token: no loss


@dataclass(frozen=True)
class Case:
    """One recommendation case: a user's history, the candidates (target included), the
    target; item ids are global (``items.item_idx``)."""

    user: int
    history: list[int]  # oldest first
    candidates: list[int]
    target: int
    # the whole in-domain history before the target, what a classic next-item model reads
    # (the prompt reads its last ``sft.history`` items, ``history``); None: ``history``
    full_history: list[int] | None = None

    @property
    def classic_history(self) -> list[int]:
        return self.history if self.full_history is None else self.full_history


def render_unified(titles: Sequence[str], cfg) -> str:
    """The CPT document of a sequence: every title but the last is the history, the last the
    next item. ``cfg`` is a ``CorpusConfig`` (template and separator).

    >>> from cprec_core.config import CorpusConfig
    >>> render_unified(["A (1990)", "B (1991)", "C (1992)"], CorpusConfig())
    'This user has bought A (1990), B (1991) in the previous. Please predict the next item this user will buy. C (1992)'
    """
    if len(titles) < 2:
        raise ValueError("a unified prompt needs at least one history item and a next item")
    history = cfg.separator.join(titles[:-1])
    return cfg.template.replace("{history}", history).replace("{next}", titles[-1])


def render_llara(case: Case, titles: dict[int, str], hybrid: bool,
                 listing: bool = True) -> tuple[str, list[int]]:
    """LLaRA's prompt: (text, item id behind each placeholder in order of appearance);
    without ``listing``, the same prompt without the candidates (``LLARA_RANK_TEMPLATE``).

    >>> render_llara(Case(0, [1], [2, 3], 2), {1: "A", 2: "B", 3: "C"}, True, listing=False)
    ('This user has watched A [emb] in the previous. Recommend one movie for this user to watch next. The movie title is', [1])
    """

    def item(i: int) -> str:
        return f"{titles[i]} {PLACEHOLDER}" if hybrid else titles[i]

    history = ", ".join(item(i) for i in case.history)
    if not listing:
        return (LLARA_RANK_TEMPLATE.format(history=history),
                list(case.history) if hybrid else [])
    text = LLARA_TEMPLATE.format(history=history, n=len(case.candidates),
                                 candidates=", ".join(item(i) for i in case.candidates))
    slots = [*case.history, *case.candidates] if hybrid else []
    return text, slots


def render_zero_shot(case: Case, titles: dict[int, str], corpus) -> str:
    """The candidate list, then the unified CPT prompt (``corpus``: a ``CorpusConfig``) up to
    where the next title goes.

    >>> from cprec_core.config import CorpusConfig
    >>> render_zero_shot(Case(0, [1, 2], [3, 4], 3), {1: "A", 2: "B", 3: "C", 4: "D"},
    ...                  CorpusConfig())
    'Given the following 2 items: C, D. This user has bought A, B in the previous. Please predict the next item this user will buy.'
    """
    history = corpus.separator.join(titles[i] for i in case.history)
    head = corpus.template.split("{next}")[0].replace("{history}", history).rstrip()
    listed = corpus.separator.join(titles[c] for c in case.candidates)
    return f"Given the following {len(case.candidates)} items: {listed}. {head}"


def prompt_text(case: Case, titles: dict[int, str], hybrid: bool,
                corpus, listing: bool = True) -> tuple[str, list[int]]:
    """(text, item behind each ``[emb]``) of the prompt a system reads: LLaRA's hybrid prompt
    for the SFT systems (``listing``: see ``render_llara``), the zero-shot text prompt (no
    slots) for the others."""
    if hybrid:
        return render_llara(case, titles, hybrid=True, listing=listing)
    return render_zero_shot(case, titles, corpus), []


def answer_text(title: str) -> str:
    """What follows the prompt when the model names ``title`` (EOS comes after it)."""
    return " " + title


def bos_prefix(tokenizer) -> list[int]:
    """The token ids the tokenizer puts before a text (its BOS, for Llama's and Gemma's
    conventions; nothing for Qwen2's, GPT-2's or SmolLM2's). Prompts and CPT documents are
    tokenised without special tokens (EOS is placed by hand), then get this prefix, so a
    model that was pretrained on BOS-led documents (Gemma degrades badly without one)
    reads them the same way in CPT, SFT and scoring."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    ids = tokenizer("a")["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def encode_prompt(case: Case, titles: dict[int, str], tokenizer, placeholder_id: int,
                  hybrid: bool, listing: bool = True) -> tuple[list[int], list[int]]:
    """(token ids of LLaRA's prompt, led by the tokenizer's BOS where it uses one, item id
    behind each placeholder token)."""
    prompt, slots = render_llara(case, titles, hybrid, listing)
    prompt_ids = bos_prefix(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n_slots = sum(1 for t in prompt_ids if t == placeholder_id)
    if n_slots != len(slots):
        raise ValueError(f"prompt has {n_slots} placeholder tokens for {len(slots)} items: the"
                         f" tokenizer splits {PLACEHOLDER!r} or a title contains it")
    return prompt_ids, slots


def encode_answer(title: str, tokenizer) -> list[int]:
    """Token ids of the answer naming ``title``, then EOS."""
    return tokenizer(answer_text(title), add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]


def encode_sft_example(case: Case, titles: dict[int, str], tokenizer, placeholder_id: int,
                       hybrid: bool) -> dict:
    """Token ids of LLaRA's prompt + the target's answer + EOS, labels on the answer only,
    and the item id behind each placeholder token."""
    prompt_ids, slots = encode_prompt(case, titles, tokenizer, placeholder_id, hybrid)
    answer_ids = encode_answer(titles[case.target], tokenizer)
    return {"input_ids": prompt_ids + answer_ids,
            "labels": [IGNORE] * len(prompt_ids) + answer_ids, "slot_items": slots}


def parse_answer(text: str, case: Case, titles: dict[int, str]) -> int | None:
    """The candidate named by the first line of ``text``, or None when not exactly one is.

    >>> t = {3: "Alien (1979)", 4: "Heat (1995)"}
    >>> c = Case(0, [], [3, 4], 3)
    >>> parse_answer(" Heat (1995)\\nmore", c, t), parse_answer("Alien (1979) or Heat (1995)", c, t)
    (4, None)
    """
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    named = [c for c in case.candidates if titles[c] in line]
    return named[0] if len(named) == 1 else None
