"""What scoring a profile's LLM systems costs, counted on the real test cases: the tokens the
likelihood forward feeds per case (prompt, then the 20 candidate titles) and the FLOPs of
the decoder's linear layers and the LM head on them. Divided by a chip's measured matmul
rate this bounds the evaluation's time from below, before anything is trained
(``benchmarks/bench_scoring_bound.py``): whether a study can fit a time budget on a machine
depends on the chip far more than on the training sizes, because every system scores every
test user.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
from torch import nn

from cprec_core.config import CorpusConfig, Profile
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.data.cases import load_cases
from cprec_core.evaluation.evaluate import planned_llm_systems
from cprec_core.prompts import Case, prompt_text
from cprec_core.systems import ZERO_SHOT_SYSTEM_NAMES


def scoring_cases(con: duckdb.DuckDBPyConnection, profile: Profile, slug: str,
                  n: int) -> tuple[str, list[Case], dict[int, str]]:
    """(domain, its first ``n`` stored test cases as the scorer reads them, the domain's
    titles by item)."""
    domain, _ = domain_for_slug(con, slug)
    cases = load_cases(con, domain, "test", n)
    titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                              [domain]).fetchall())
    samples = [Case(int(u), h[-profile.sft.history:], [int(c) for c in cand], int(t))
               for u, h, cand, t in zip(cases.users, cases.histories, cases.candidates,
                                        cases.targets)]
    return domain, samples, titles


def case_tokens(tokenizer, sample: Case, titles: dict[int, str], hybrid: bool,
                corpus: CorpusConfig) -> tuple[int, int]:
    """(prompt tokens, continuation input tokens) of one case in ``LLMScorer``'s forward:
    each candidate is `` Title`` + EOS, and the EOS is only a target, never an input. A
    hybrid prompt needs ``[emb]`` in the tokenizer (``add_placeholder_to_tokenizer``)."""
    text, _ = prompt_text(sample, titles, hybrid, corpus)
    prompt = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    titles_in = sum(len(tokenizer(" " + titles[c], add_special_tokens=False)["input_ids"])
                    for c in sample.candidates)
    return prompt, titles_in


def model_flops(model: nn.Module) -> tuple[int, int]:
    """(FLOPs per token of the decoder's linear layers, FLOPs per LM-head row): 2 x in x out
    of every ``nn.Linear`` in the decoder, whatever the architecture (an unmerged LoRA's
    own small matmuls count too; the scorer merges LoRA into the weights)."""
    per_token = sum(2 * m.in_features * m.out_features
                    for m in model.get_decoder().modules() if isinstance(m, nn.Linear))
    head = model.get_output_embeddings()
    return per_token, 2 * head.in_features * head.out_features


@dataclass(frozen=True)
class DomainWorkload:
    """One target domain's LLM scoring: its test cases and, per prompt kind, the system runs
    and the mean tokens per case."""

    domain: str
    cases: int
    hybrid_runs: int  # SFT systems x seeds (LLaRA's hybrid prompt)
    text_runs: int  # zero-shot systems (text prompt)
    hybrid_prompt_tokens: float
    text_prompt_tokens: float
    continuation_tokens: float  # the 20 titles' input tokens

    @property
    def runs(self) -> int:
        return self.hybrid_runs + self.text_runs

    def flops(self, per_token: int, per_head_row: int) -> float:
        """Linear-layer and LM-head FLOPs of every system run on every case. The head runs on
        the prompt's last position and every continuation input (``LLMScorer._head``)."""
        head = (self.continuation_tokens + 1) * per_head_row
        return self.cases * sum(
            runs * ((prompt + self.continuation_tokens) * per_token + head)
            for runs, prompt in ((self.hybrid_runs, self.hybrid_prompt_tokens),
                                 (self.text_runs, self.text_prompt_tokens)))


def domain_workload(con: duckdb.DuckDBPyConnection, profile: Profile, slug: str,
                    tokenizer) -> DomainWorkload:
    """The test cases ``evaluation`` scores for ``slug`` (``evaluation.max_cases`` sampled the
    same way), tokenised as every planned LLM system reads them."""
    cfg = profile.evaluation
    domain, _ = domain_for_slug(con, slug)
    cases = load_cases(con, domain, "test", cfg.max_cases, cfg.seed)
    titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                              [domain]).fetchall())
    planned = planned_llm_systems(profile)
    text_runs = sum(1 for system, _ in planned if system in ZERO_SHOT_SYSTEM_NAMES)
    sums = {True: 0, False: 0}
    titles_in = 0
    for user, history, candidates, target in zip(cases.users, cases.histories,
                                                 cases.candidates, cases.targets):
        sample = Case(int(user), history[-profile.sft.history:],
                           [int(c) for c in candidates], int(target))
        for hybrid in (True, False):
            prompt, conts = case_tokens(tokenizer, sample, titles, hybrid, profile.corpus)
            sums[hybrid] += prompt
        titles_in += conts
    n = max(len(cases.users), 1)
    return DomainWorkload(domain, len(cases.users), len(planned) - text_runs, text_runs,
                          sums[True] / n, sums[False] / n, titles_in / n)
