"""LLM systems on the fixed candidate sets: likelihood ranking and greedy generation from one
forward per batch of cases.

Likelihood ranking (ours): each case's prompt and its 20 candidate continuations
(`` Title`` + EOS) go through the model as one row with a tree attention mask: every
continuation sees the prompt and its own earlier tokens, nothing of the other candidates, and
its positions start where the prompt ends. So the prompt is computed once, no KV cache is
copied, and the LM head (in fp32) runs only on the positions that predict a continuation
token. Several cases share a forward (``evaluation.batch_size``; rows padded, padding seen by
nothing). Each candidate gets its summed log-probability and the mean per token
(length-normalised); ranking by either gives HR@1/3/5 and NDCG@3/5 with ValidRatio 1.

Generation (the paper's protocol): the prompts are left-aligned to end in the same column,
so the same forward's KV cache, cut back to that column, is a left-padded prompt cache;
greedy decoding continues from it without a second prefill (at most ``max_new_tokens``,
a row stops at EOS or a newline). The first line is valid iff exactly one candidate title
occurs in it; HitRatio@1 counts valid answers that name the target.

Systems: SFT adapters (``llara``, ``cprec``, ``cprec_<variant>``) read LLaRA's hybrid
prompt, with projected SASRec embeddings at the ``[emb]`` slots. The zero-shot systems
(``base``: the base model; ``cprec_zero_shot``: the WSA CPT adapter without SFT) read a
text prompt: the candidate list, then the unified CPT template up to the next item. LoRA is
merged into the weights for inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer

from cprec_core.config import CorpusConfig, Profile
from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds
from cprec_core.models.loader import load_base_model, resolve_device, resolve_dtype
from cprec_core.sft_data import SFTSample, render

ZERO_SHOT_SYSTEMS = ("base", "cprec_zero_shot")


def render_zero_shot(sample: SFTSample, titles: dict[int, str], corpus: CorpusConfig) -> str:
    """The candidate list, then the unified CPT prompt up to where the next title goes.

    >>> s = SFTSample(0, [1, 2], [3, 4], 3)
    >>> render_zero_shot(s, {1: "A", 2: "B", 3: "C", 4: "D"}, CorpusConfig())
    'Given the following 2 items: C, D. This user has bought A, B in the previous. Please predict the next item this user will buy.'
    """
    history = corpus.separator.join(titles[i] for i in sample.history)
    head = corpus.template.split("{next}")[0].replace("{history}", history).rstrip()
    listed = corpus.separator.join(titles[c] for c in sample.candidates)
    return f"Given the following {len(sample.candidates)} items: {listed}. {head}"


def parse_answer(text: str, sample: SFTSample, titles: dict[int, str]) -> int | None:
    """The candidate named by the first line of ``text``, or None when not exactly one is.

    >>> s = SFTSample(0, [], [3, 4], 3)
    >>> t = {3: "Alien (1979)", 4: "Heat (1995)"}
    >>> parse_answer(" Heat (1995)\\nmore", s, t), parse_answer("Alien (1979) or Heat (1995)", s, t)
    (4, None)
    """
    line = text.strip().split("\n", 1)[0] if text.strip() else ""
    named = [c for c in sample.candidates if titles[c] in line]
    return named[0] if len(named) == 1 else None


@dataclass
class CaseResult:
    summed: np.ndarray  # (n_candidates,) summed log-probability of each continuation
    mean: np.ndarray  # per token
    answer: str | None = None  # generated first line (None when generation is off)
    chosen: int | None = None  # the candidate it names, None if invalid


@dataclass
class LLMScorer:
    """A causal LM (LoRA merged), with a projector for the hybrid prompt or none (text)."""

    model: torch.nn.Module
    tokenizer: object
    projector: Projector | None
    item_table: torch.Tensor | None
    local: dict[int, int]
    placeholder_id: int | None
    dtype: torch.dtype
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        self.model.to(self.device)
        if self.projector is not None:
            self.projector.to(self.device)
            self.item_table = self.item_table.to(self.device)

    @classmethod
    def load(cls, profile: Profile, slug: str, system: str, seed: int = 0) -> "LLMScorer":
        """An SFT system (hybrid prompt) or a zero-shot system (text prompt)."""
        device = resolve_device(profile.device)
        dtype = resolve_dtype(profile.sft.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(profile.corpus_dir / "tokenizer")
        base = load_base_model(profile.model.name, profile.cache_dir, dtype, tokenizer,
                               profile.model.trust_remote_code)
        if system in ZERO_SHOT_SYSTEMS:
            model = base
            if system == "cprec_zero_shot":
                folder = profile.cpt_dir("wsa") / "adapter"
                if not (folder / "adapter_model.safetensors").is_file():
                    raise FileNotFoundError(f"{folder}: no CPT adapter; materialise cpt_adapter")
                model = PeftModel.from_pretrained(base, folder).merge_and_unload()
            return cls(model.eval(), tokenizer, None, None, {}, None, dtype, profile.corpus,
                       torch.device(device))
        from cprec_core.collab.train_sasrec import load_sasrec

        folder = profile.sft_dir(system, slug, seed)
        if not (folder / "adapter" / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: no SFT adapter; materialise it first")
        placeholder_id = add_placeholder_token(tokenizer, base)
        model = PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload().eval()
        sasrec, index = load_sasrec(profile.domain_dir("sasrec", slug))
        table = sasrec.item_embeddings().float()
        projector = Projector(table.shape[1], base.get_input_embeddings().embedding_dim)
        projector.load_state_dict(load_file(folder / "projector.safetensors"))
        return cls(model, tokenizer, projector.eval(), table,
                   {item: j + 1 for j, item in enumerate(index)}, placeholder_id, dtype,
                   profile.corpus, torch.device(device))

    @property
    def hybrid(self) -> bool:
        return self.projector is not None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.dtype == torch.bfloat16)

    def prompt(self, sample: SFTSample, titles: dict[int, str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (1, P), input embeddings (1, P, d)) of the case's prompt."""
        if self.hybrid:
            text, slots = render(sample, titles, hybrid=True)
        else:
            text, slots = render_zero_shot(sample, titles, self.corpus), []
        ids = torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]],
                           device=self.device)
        slot_items = torch.tensor([self.local[i] for i in slots], dtype=torch.long,
                                  device=self.device)
        embeds = hybrid_embeds(self.model, self.projector, self.item_table, ids, slot_items,
                               self.placeholder_id, hybrid=self.hybrid)
        return ids, embeds

    def continuations(self, sample: SFTSample, titles: dict[int, str]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer(" " + titles[c], add_special_tokens=False)["input_ids"] + [eos]
                for c in sample.candidates]

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities from the LM head in fp32 (bf16 logits cost ~0.1 nat per token)."""
        if getattr(self, "_head_weight", None) is None:
            self._head_weight = self.model.get_output_embeddings().weight.detach().float()
        return torch.log_softmax(hidden.float() @ self._head_weight.T, -1)

    @torch.no_grad()
    def score(self, samples: list[SFTSample], titles: dict[int, str], generate: bool = False,
              max_new_tokens: int = 32) -> list[CaseResult]:
        """Likelihood of every candidate of every case, and with ``generate`` the greedy
        answer, from one forward per batch of cases.

        Row b of the batch: left padding, the prompt (ending at the same column ``w`` in
        every row), then the 20 continuations under the case's tree mask, then right
        padding. Padding is seen by no other position. The KV cache cut back to ``w``
        columns is then exactly a left-padded prompt cache, so decoding needs no prefill.
        """
        dev = self.device
        cases = []
        for sample in samples:
            with self._autocast():
                _, prompt_embeds = self.prompt(sample, titles)
            cases.append((prompt_embeds[0], self.continuations(sample, titles)))
        w = max(len(e) for e, _ in cases)
        width = w + max(sum(len(c) for c in conts) for _, conts in cases)
        embeds = torch.zeros(len(cases), width, cases[0][0].shape[1], dtype=cases[0][0].dtype,
                             device=dev)
        mask = torch.eye(width, dtype=torch.bool).repeat(len(cases), 1, 1, 1)
        positions = torch.zeros(len(cases), width, dtype=torch.long)
        prompt_columns = torch.zeros(len(cases), w, dtype=torch.long)
        # LM head rows: the prompt's last position (it predicts every continuation's first
        # token, column w - 1 in every row), then each continuation token but the last
        rows, cols, targets = [], [], []
        for b, (prompt_embeds, conts) in enumerate(cases):
            p, lengths = len(prompt_embeds), [len(c) for c in conts]
            flat = torch.tensor([t for c in conts for t in c])
            lo, hi = w - p, w + len(flat)
            # prompt causal; each continuation sees the prompt and its own past
            owner = torch.cat([torch.full((p,), -1), torch.repeat_interleave(
                torch.arange(len(conts)), torch.tensor(lengths))])
            mask[b, 0, lo:hi, lo:hi] = torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril() & (
                (owner[None, :] == -1) | (owner[:, None] == owner[None, :]))
            with self._autocast():
                embeds[b, lo:w] = prompt_embeds
                embeds[b, w:hi] = self.model.get_input_embeddings()(flat.to(dev))
            positions[b, lo:hi] = torch.cat([torch.arange(p)] + [torch.arange(p, p + k) for k in lengths])
            prompt_columns[b, lo:] = 1
            starts = np.cumsum([0, *lengths[:-1]])
            for s, c in zip(starts, conts):
                rows += [b] * (len(c) - 1)
                cols += [w + int(s) + j for j in range(len(c) - 1)]
                targets += c[1:]
        positions = positions.to(dev)
        with self._autocast():
            out = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask.to(dev),
                                           position_ids=positions, use_cache=generate)
        hidden = out.last_hidden_state
        first = self._head(hidden[:, w - 1])  # (B, V): also the first greedy step
        first_tokens = torch.tensor([[c[0] for c in conts] for _, conts in cases], device=dev)
        first_lp = first.gather(1, first_tokens).cpu().numpy()
        rest_lp = self._head(hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)])
        rest_lp = rest_lp.gather(1, torch.tensor(targets, device=dev)[:, None])[:, 0].cpu().numpy()
        results, row = [], 0
        for b, (_, conts) in enumerate(cases):
            summed = np.zeros(len(conts))
            for k, c in enumerate(conts):
                summed[k] = first_lp[b, k] + rest_lp[row:row + len(c) - 1].sum()
                row += len(c) - 1
            results.append(CaseResult(summed, summed / np.asarray([len(c) for c in conts], float)))
        if generate:
            out.cache.crop(w - width)  # negative: keep the first w columns (the prompts)
            answers = self._greedy(out.cache, first, prompt_columns.to(dev),
                                   positions[:, w - 1] + 1, max_new_tokens)
            for result, sample, answer in zip(results, samples, answers):
                result.answer, result.chosen = answer, parse_answer(answer, sample, titles)
        return results

    def _greedy(self, cache, first: torch.Tensor, attention: torch.Tensor,
                positions: torch.Tensor, max_new_tokens: int) -> list[str]:
        """Greedy decoding of a left-padded batch from its prompt cache; a row stops at EOS
        or a newline (only the first line is read)."""
        eos = self.tokenizer.eos_token_id
        token = first.argmax(-1)
        generated = [[] for _ in range(len(token))]
        done = [False] * len(token)
        for step in range(max_new_tokens):
            for b, t in enumerate(token.tolist()):  # one device sync per step
                if not done[b]:
                    if t == eos:
                        done[b] = True
                        continue
                    generated[b].append(t)
                    done[b] = "\n" in self.tokenizer.decode([t])
            if all(done) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, attention.new_ones(len(token), 1)], 1)
            with self._autocast():
                out = self.model(input_ids=token[:, None], attention_mask=attention,
                                 position_ids=(positions + step)[:, None], cache=cache,
                                 use_cache=True)
            cache = out.cache
            token = out.logits[:, -1].float().argmax(-1)
        texts = [self.tokenizer.decode(g, skip_special_tokens=True) for g in generated]
        return [t.lstrip(" ").split("\n", 1)[0] for t in texts]

    def evaluate(self, samples: list[SFTSample], titles: dict[int, str], batch_size: int = 8,
                 generate: bool = True, max_new_tokens: int = 32, progress=None) -> list[CaseResult]:
        """Likelihood (and greedy answers) for every case, ``batch_size`` cases at a time,
        in the order given. Batches are formed from cases of similar length (prompt plus
        candidate titles), so fewer columns of each forward are padding."""
        def length(sample: SFTSample) -> int:
            return len(render(sample, titles, hybrid=True)[0]) + sum(
                len(titles[c]) for c in sample.candidates)

        order = sorted(range(len(samples)), key=lambda i: length(samples[i]))
        results: list[CaseResult | None] = [None] * len(samples)
        for start in range(0, len(samples), batch_size):
            batch = order[start:start + batch_size]
            for i, result in zip(batch, self.score([samples[i] for i in batch], titles,
                                                   generate, max_new_tokens)):
                results[i] = result
            if progress:
                progress(min(start + batch_size, len(samples)), len(samples))
        return results

    @torch.no_grad()
    def score_naive(self, sample: SFTSample, titles: dict[int, str]) -> CaseResult:
        """Reference and benchmark baseline: one full forward of prompt + candidate per
        candidate, no shared prefix."""
        conts = self.continuations(sample, titles)
        with self._autocast():
            ids, prompt_embeds = self.prompt(sample, titles)
        summed = np.zeros(len(conts))
        for k, c in enumerate(conts):
            tokens = torch.tensor(c, device=self.device)
            with self._autocast():
                embeds = torch.cat([prompt_embeds,
                                    self.model.get_input_embeddings()(tokens)[None]], 1)
                hidden = self.model.get_decoder()(inputs_embeds=embeds,
                                                  use_cache=False).last_hidden_state[0]
            lp = self._head(hidden[ids.shape[1] - 1:-1])
            summed[k] = float(lp.gather(1, tokens[:, None]).sum())
        return CaseResult(summed, summed / np.asarray([len(c) for c in conts], dtype=float))

