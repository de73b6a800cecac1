"""LLM systems on the fixed candidate sets: likelihood ranking and greedy generation from one
forward per batch of cases.

Likelihood (ours): a case's prompt and its 20 candidate continuations (`` Title`` + EOS) go
through the model as one row with the tree mask of cprec_core.models.candidate_tree: the
prompt is computed once and the LM head runs only where a continuation token is predicted.
Each candidate gets its summed log-probability and the mean per token.

Generation (the paper's protocol): greedy, at most ``max_new_tokens``, stopping at EOS or a
newline. While the greedy tokens follow a candidate title the tree forward already holds
every next argmax (``greedy_walk``); other rows decode from the same forward's KV cache cut
back to the prompts, gathered over batches (``decode_rows``) because a decoding step reads
every weight whatever its number of rows, and finished rows leave the batch
(``drop_finished``). Answers are parsed by cprec_core.prompts.parse_answer.

Which prompt and weights a system uses comes from its entry in cprec_core.systems.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer, DynamicCache

from cprec_core.config import CorpusConfig, Profile
from cprec_core.evaluation.allocator import keep_freed_heap
from cprec_core.layout import TrainedAdapter
from cprec_core.models.candidate_tree import TREE_ATTENTION, build_tree, sliding_window_of
from cprec_core.models.hybrid import (Projector, add_placeholder_token, as_token_embeddings,
                                      collab_inputs, hybrid_embeds)
from cprec_core.models.loader import load_base_model, resolve_device, resolve_dtype
from cprec_core.prompts import (Case, answer_text, bos_prefix, parse_answer, prompt_text,
                                render_llara)
from cprec_core.systems import system as registered
from cprec_core.training.next_item import load_next_item_model

HEAD_ROWS = 1024  # LM head rows per chunk: 1024 x 49k fp32 logits = 200 MB


def greedy_walk(first: int, continuations: list[list[int]], argmax: list[list[int]], eos: int,
                ends_line, max_new_tokens: int) -> list[int] | None:
    """The greedy answer's tokens where the tree forward already holds them, else None.

    ``continuations[k]``: candidate k's tokens (title, EOS); ``argmax[k][j]``: the model's
    argmax after its first j + 1 tokens (one per input position of the tree forward);
    ``first``: the argmax after the prompt. While greedy decoding's tokens are a prefix of
    some candidate's title, the next argmax is already known, so no decoding step is needed.
    Stops as the decoding loop does: at EOS (not kept), at a token that ``ends_line`` (kept)
    or after ``max_new_tokens``; None as soon as the tokens leave every title.

    >>> conts = [[5, 6, 0], [5, 7, 0]]  # two titles sharing their first token; EOS is 0
    >>> greedy_walk(5, conts, [[9, 0], [0, 0]], 0, lambda t: False, 8)  # argmax after 5 is 9
    >>> greedy_walk(5, conts, [[7, 1], [7, 0]], 0, lambda t: False, 8)  # 5 7, then EOS
    [5, 7]
    >>> greedy_walk(5, conts, [[7, 1], [7, 0]], 0, lambda t: False, 1)
    [5]
    """
    tokens, token, alive = [], first, range(len(continuations))
    while token != eos:
        tokens.append(token)
        if ends_line(token) or len(tokens) == max_new_tokens:
            break
        depth = len(tokens) - 1
        alive = [k for k in alive
                 if len(continuations[k]) - 1 > depth and continuations[k][depth] == token]
        if not alive:
            return None
        token = argmax[alive[0]][depth]
    return tokens


@contextmanager
def _fp32_matmul_in_bf16(enabled: bool):
    """fp32 matmuls computed by oneDNN in bf16 with fp32 accumulation. Exact for the LM head
    of a bf16 model (both operands are bf16 values) and about 2x faster than IEEE fp32."""
    if not enabled:  # CUDA or fp32 models: the setting is not touched at all
        yield
        return
    backend = torch.backends.mkldnn.matmul
    before = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        yield
    finally:
        backend.fp32_precision = before


@dataclass
class _Pending:
    """Rows of one tree forward whose greedy answers still need decoding."""

    cache: DynamicCache  # their rows, cut to the prompt columns
    width: int  # prompt columns (right-padded)
    lengths: torch.Tensor  # each row's prompt length (CPU)
    first: list[int]  # each row's first answer token
    rows: list[tuple[CaseResult, Case]]  # to fill in

    def compact(self) -> None:
        """Own copies of the prompt columns, so the forward's whole cache (continuation
        columns too) is freed while this job waits for other batches' rows."""
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys.contiguous(), layer.values.contiguous()


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
    answers_read_off: int = 0  # greedy answers taken from the tree forward, no decoding
    answers_decoded: int = 0
    decode_rows: int = 64  # pending answers of several batches decoded together (evaluate)
    drop_finished: bool = True  # finished rows leave the decoding batch (_greedy)
    listing: bool = True  # the hybrid prompt lists the candidates (render_llara)
    candidate_vectors: bool = False  # each answer read after its candidate's vector
    # item -> item whose vector is injected instead (the shuffled-embedding ablation), in
    # the history ("history"), before the candidates' answers ("candidates") or both ("all")
    shuffled: dict[int, int] | None = None
    shuffle: str = "all"

    def __post_init__(self) -> None:
        self.model.to(self.device)
        self.model.set_attn_implementation(TREE_ATTENTION)
        self.window = sliding_window_of(self.model.config)
        if self.projector is not None:
            self.projector.to(self.device)
            self.item_table = self.item_table.to(self.device)

    @classmethod
    def load(cls, profile: Profile, slug: str, name: str, seed: int = 0,
             shuffle_seed: int | None = None, run: TrainedAdapter | None = None,
             shuffle: str = "all") -> "LLMScorer":
        """A registered LLM system (cprec_core.systems): an SFT adapter with its projector
        (hybrid prompt), or a zero-shot model (text prompt), LoRA merged. With
        ``shuffle_seed``, every injected vector is another item's, by a seeded permutation of
        the domain's items (the shuffled-embedding ablation). ``run``: the SFT adapter's
        folder when it is not the profile's run of (name, slug, seed)."""
        if profile.evaluation.keep_freed_heap:
            keep_freed_heap()
        entry, layout = registered(name), profile.layout
        device = resolve_device(profile.device)
        dtype = resolve_dtype(profile.sft.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(layout.tokenizer_dir)
        base = load_base_model(profile.model.name, layout.cache_dir, dtype, tokenizer,
                               profile.model.trust_remote_code,
                               allow_pickle=profile.model.allow_pickle_weights)
        if entry.kind == "zero_shot":
            model = base
            if entry.cpt_variant:
                run = layout.cpt_adapter(entry.cpt_variant)
                if not run.exists():
                    raise FileNotFoundError(f"{run.adapter}: no CPT adapter; materialise"
                                            f" {entry.asset}")
                model = PeftModel.from_pretrained(base, run.adapter).merge_and_unload()
            return cls(model.eval(), tokenizer, None, None, {}, None, dtype, profile.corpus,
                       torch.device(device))
        run = layout.sft_run(name, slug, seed) if run is None else run
        if not run.exists():
            raise FileNotFoundError(f"{run.adapter}: no SFT adapter; materialise {entry.asset}")
        placeholder_id = add_placeholder_token(tokenizer, base)
        model = PeftModel.from_pretrained(base, run.adapter).merge_and_unload().eval()
        sasrec, index = load_next_item_model(layout.next_item_model("sasrec", slug))
        table = collab_inputs(sasrec.item_embeddings(), entry.ranks_candidates)
        projector = Projector(table.shape[1], base.get_input_embeddings().embedding_dim)
        projector.load_state_dict(load_file(run.projector))
        shuffled = None
        if shuffle_seed is not None:
            order = [int(i) for i in index]
            moved = np.random.default_rng(shuffle_seed).permutation(order).tolist()
            shuffled = dict(zip(order, moved))
        listing = profile.sft.listing_for(name)
        return cls(model, tokenizer, projector.eval(), table,
                   {item: j + 1 for j, item in enumerate(index)}, placeholder_id, dtype,
                   profile.corpus, torch.device(device), listing=listing, shuffled=shuffled,
                   shuffle=shuffle, candidate_vectors=profile.sft.candidate_vectors_for(name))

    @property
    def hybrid(self) -> bool:
        return self.projector is not None

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.dtype == torch.bfloat16)

    def prompt(self, sample: Case, titles: dict[int, str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (1, P), input embeddings (1, P, d)) of the case's prompt."""
        text, slots = prompt_text(sample, titles, self.hybrid, self.corpus, self.listing)
        ids = torch.tensor([bos_prefix(self.tokenizer)
                            + self.tokenizer(text, add_special_tokens=False)["input_ids"]],
                           device=self.device)
        if self.shuffled is not None and self.shuffle in ("all", "history"):
            slots = [self.shuffled[i] for i in slots]
        slot_items = torch.tensor([self.local[i] for i in slots], dtype=torch.long,
                                  device=self.device)
        embeds = hybrid_embeds(self.model, self.projector, self.item_table, ids, slot_items,
                               self.placeholder_id, hybrid=self.hybrid)
        return ids, embeds

    def candidate_prefixes(self, samples: list[Case]) -> torch.Tensor | None:
        """(B, K, d) each candidate's injected vector, read before its answer (the shuffled
        ablation's item where it applies), or None for a system without them."""
        if not (self.candidate_vectors and self.hybrid):
            return None
        moved = self.shuffled is not None and self.shuffle in ("all", "candidates")
        items = [self.shuffled[c] if moved else c for s in samples for c in s.candidates]
        rows = torch.tensor([self.local[i] for i in items], dtype=torch.long, device=self.device)
        embedding = self.model.get_input_embeddings()
        vectors = as_token_embeddings(embedding, self.projector(self.item_table[rows]))
        return vectors.to(embedding.weight.dtype).view(len(samples), len(samples[0].candidates), -1)

    def continuations(self, sample: Case, titles: dict[int, str]) -> list[list[int]]:
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer(answer_text(titles[c]), add_special_tokens=False)["input_ids"] + [eos]
                for c in sample.candidates]

    def _head(self, hidden: torch.Tensor, targets: torch.Tensor | None = None,
              argmax: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per row of ``hidden``: log p of each token in that row of ``targets``, and with
        ``argmax`` the most likely token, from fp32 logits (bf16 logits cost ~0.1 nat per
        token), ``HEAD_ROWS`` rows at a time so that (rows, vocabulary) floats never all
        exist at once."""
        if getattr(self, "_head_weight", None) is None:
            self._head_weight = self.model.get_output_embeddings().weight.detach().float()
        exact_bf16 = self.dtype == torch.bfloat16 and self.device.type == "cpu"
        logps, tops = [], []
        with _fp32_matmul_in_bf16(exact_bf16):
            for s in range(0, len(hidden), HEAD_ROWS):
                logits = hidden[s:s + HEAD_ROWS].float() @ self._head_weight.T
                if argmax:
                    tops.append(logits.argmax(-1))
                if targets is not None:
                    logps.append(torch.log_softmax(logits, -1).gather(1, targets[s:s + HEAD_ROWS]))
        return (torch.cat(logps) if logps else None), (torch.cat(tops) if tops else None)

    @torch.no_grad()
    def score(self, samples: list[Case], titles: dict[int, str], generate: bool = False,
              max_new_tokens: int = 32) -> list[CaseResult]:
        """Likelihood of every candidate of every case, and with ``generate`` the greedy
        answer, from one forward of the batch (``_tree``) and, for the answers that leave
        the candidate titles, decoding from its prompt cache (``_decode``)."""
        results, pending = self._tree(samples, titles, generate, max_new_tokens)
        if pending:
            self._decode([pending], titles, max_new_tokens)
        return results

    def _tree(self, samples: list[Case], titles: dict[int, str], generate: bool,
              max_new_tokens: int) -> tuple[list[CaseResult], _Pending | None]:
        """Likelihoods and, with ``generate``, the greedy answers that the forward already
        holds; the other rows come back as a ``_Pending`` decoding job.

        The batch is a tree batch (cprec_core.models.candidate_tree); the KV cache cut back
        to its prompt columns is a right-padded prompt cache, so decoding needs no prefill.
        """
        prompts, conts = [], []
        for sample in samples:
            with self._autocast():
                prompts.append(self.prompt(sample, titles)[1][0])
            conts.append(self.continuations(sample, titles))
        if len({len(s.candidates) for s in samples}) > 1:
            counts = ", ".join(f"user {s.user}: {len(s.candidates)}" for s in samples)
            raise ValueError(f"cases scored together need the same number of candidates ({counts});"
                             " check candidate_sets")
        with self._autocast():
            tree = build_tree(prompts, conts, self.model.get_input_embeddings(),
                              self.candidate_prefixes(samples))
            out = self.model.get_decoder()(**tree.forward_kwargs(), use_cache=generate,
                                           **self._cache_kwargs(generate))
        w, lengths = tree.width, tree.lengths
        hidden = out.last_hidden_state
        first_lp, first_top = self._head(hidden[torch.arange(len(samples)), lengths - 1],
                                         tree.first_targets, argmax=generate)
        rest_lp, rest_top = self._head(hidden[tree.rows, tree.cols], tree.targets[:, None],
                                       generate)
        first_lp, rest_lp = first_lp.cpu().numpy(), rest_lp[:, 0].cpu().numpy()
        if tree.prefixed:  # every answer token is scored inside its branch
            first_lp = np.zeros_like(first_lp)
        results, tops, row = [], [], 0
        rest_top = rest_top.tolist() if generate else None
        for b, sizes in enumerate(tree.sizes):
            summed, top = first_lp[b].astype(float), []
            for k, n in enumerate(sizes):
                summed[k] += rest_lp[row:row + n].sum()
                if generate:
                    top.append(rest_top[row:row + n])
                row += n
            tops.append(top)
            results.append(CaseResult(summed, summed / np.asarray([len(c) for c in conts[b]],
                                                                  float)))
        pending = None
        if generate:
            pending = self._read_off(out.cache, w, lengths, first_top.tolist(), conts, tops,
                                     results, samples, titles, max_new_tokens)
        return results, pending

    def _cache_kwargs(self, generate: bool) -> dict:
        """With sliding-window layers, a cache that keeps every column: transformers' own
        drops what falls out of the window, so it could not be cut back to the prompts
        (``_read_off``) nor padded and stacked (``_decode``); ``_greedy`` applies the window
        in its masks instead."""
        return {"cache": DynamicCache()} if generate and self.window else {}

    def _ends_line(self, token: int) -> bool:
        return "\n" in self.tokenizer.decode([token])

    def _set_answer(self, result: CaseResult, sample: Case, tokens: list[int],
                    titles: dict[int, str]) -> None:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        result.answer = text.lstrip(" ").split("\n", 1)[0]
        result.chosen = parse_answer(result.answer, sample, titles)

    def _read_off(self, cache, w: int, lengths: torch.Tensor, first: list[int],
                  conts: list[list[list[int]]], tops: list[list[list[int]]],
                  results: list[CaseResult], samples: list[Case], titles: dict[int, str],
                  max_new_tokens: int) -> _Pending | None:
        """Greedy answers read off the tree forward where they follow a candidate title
        (``greedy_walk``); the rest of the rows, with their prompt columns of the cache, as
        a job for ``_decode``."""
        eos = self.tokenizer.eos_token_id
        # with candidate vectors a branch reads its vector first: its outputs are not the
        # greedy answer of the prompt alone, so every answer is decoded from the prompt
        tokens = [None if self.candidate_vectors and self.hybrid else
                  greedy_walk(f, cs, ts, eos, self._ends_line, max_new_tokens)
                  for f, cs, ts in zip(first, conts, tops)]
        pending = [b for b, t in enumerate(tokens) if t is None]
        self.answers_read_off += len(tokens) - len(pending)
        self.answers_decoded += len(pending)
        for b, t in enumerate(tokens):
            if t is not None:
                self._set_answer(results[b], samples[b], t, titles)
        if not pending:
            return None
        cache.crop(w - cache.get_seq_length())  # negative: keep the first w columns
        if len(pending) < len(tokens):
            cache.batch_select_indices(torch.tensor(pending, device=self.device))
        return _Pending(cache, w, lengths[pending], [first[b] for b in pending],
                        [(results[b], samples[b]) for b in pending])

    def _decode(self, jobs: list[_Pending], titles: dict[int, str], max_new_tokens: int) -> None:
        """Greedy decoding of the pending rows of one or more tree forwards at once: a
        decoding step reads every weight of the model whatever its number of rows, so more
        rows per step cost little more. The jobs' prompt caches are
        right-padded to the widest and stacked."""
        width = max(j.width for j in jobs)
        if len(jobs) == 1:
            cache = jobs[0].cache
        else:
            cache = DynamicCache() if self.window else DynamicCache(config=self.model.config)
            for i in range(len(jobs[0].cache.layers)):
                keys = [F.pad(j.cache.layers[i].keys, (0, 0, 0, width - j.width)) for j in jobs]
                values = [F.pad(j.cache.layers[i].values, (0, 0, 0, width - j.width))
                          for j in jobs]
                cache.update(torch.cat(keys), torch.cat(values), i)
        lengths = torch.cat([j.lengths for j in jobs])
        attention = (torch.arange(width)[None, :] < lengths[:, None]).long()
        decoded = self._greedy(cache, [t for j in jobs for t in j.first],
                               attention.to(self.device), lengths.to(self.device),
                               max_new_tokens)
        for (result, sample), tokens in zip([r for j in jobs for r in j.rows], decoded):
            self._set_answer(result, sample, tokens, titles)

    def _greedy(self, cache, first: list[int], attention: torch.Tensor,
                positions: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding of a right-padded batch from its prompt cache (``attention``
        marks the prompt columns, ``positions`` is each row's next position); a row stops at
        EOS or a newline (only the first line is read). The argmax comes from the same fp32
        head as the tree forward's.

        Finished rows leave the batch (with ``drop_finished``) once an eighth of the rows
        still decoding have finished: a step's cost grows with its rows' cache, and one
        answer running to the cap would otherwise keep every finished row stepping too."""
        eos = self.tokenizer.eos_token_id
        token = torch.tensor(first, device=self.device)
        # each cached column's position (prompt columns: their index; padding is masked)
        key_positions = torch.arange(attention.shape[1], device=self.device).expand(
            len(first), -1)
        generated = [[] for _ in first]
        done = [False] * len(first)
        active = list(range(len(first)))  # row of the batch -> row of ``first``
        for step in range(max_new_tokens):
            for b, t in zip(active, token.tolist()):  # one device sync per step
                if not done[b]:
                    if t == eos:
                        done[b] = True
                        continue
                    generated[b].append(t)
                    done[b] = self._ends_line(t)
            finished = sum(done[b] for b in active)
            if finished == len(active) or step == max_new_tokens - 1:
                break
            if self.drop_finished and finished >= max(1, len(active) // 8):
                keep = torch.tensor([k for k, b in enumerate(active) if not done[b]],
                                    device=self.device)
                cache.batch_select_indices(keep)
                token, attention, positions = token[keep], attention[keep], positions[keep]
                key_positions = key_positions[keep]
                active = [b for b in active if not done[b]]
            attention = torch.cat([attention, attention.new_ones(len(active), 1)], 1)
            key_positions = torch.cat([key_positions, (positions + step)[:, None]], 1)
            with self._autocast():
                out = self.model.get_decoder()(
                    input_ids=token[:, None], position_ids=(positions + step)[:, None],
                    attention_mask=self._step_masks(attention, key_positions, positions + step),
                    cache=cache, use_cache=True)
            cache = out.cache
            token = self._head(out.last_hidden_state[:, -1], argmax=True)[1]
        return generated

    def _step_masks(self, attention: torch.Tensor, key_positions: torch.Tensor,
                    query_positions: torch.Tensor):
        """A decoding step's attention mask: the (B, columns) padding mask, or with
        sliding-window layers one 4D mask per layer type, the window counted in positions
        (right-padded rows have columns that are not positions, which transformers' own
        sliding mask would count)."""
        if not self.window:
            return attention
        full = attention.bool()[:, None, None, :]
        near = (query_positions[:, None] - key_positions < self.window)[:, None, None, :]
        return {"full_attention": full, "sliding_attention": full & near}

    def evaluate(self, samples: list[Case], titles: dict[int, str], batch_size: int = 8,
                 generate: bool = True, max_new_tokens: int = 32, progress=None) -> list[CaseResult]:
        """Likelihood (and greedy answers) for every case, ``batch_size`` cases at a time,
        in the order given. Batches are formed from cases of similar length (prompt plus
        candidate titles), so fewer columns of each forward are padding."""
        def length(sample: Case) -> int:
            return len(render_llara(sample, titles, True, self.listing)[0]) + sum(
                len(titles[c]) for c in sample.candidates)

        order = sorted(range(len(samples)), key=lambda i: length(samples[i]))
        results: list[CaseResult | None] = [None] * len(samples)
        jobs: list[_Pending] = []
        with torch.no_grad():
            for start in range(0, len(samples), batch_size):
                batch = order[start:start + batch_size]
                scored, pending = self._tree([samples[i] for i in batch], titles, generate,
                                             max_new_tokens)
                for i, result in zip(batch, scored):
                    results[i] = result
                jobs += [pending] if pending else []
                last = start + batch_size >= len(samples)
                if jobs and (last or sum(len(j.first) for j in jobs) >= self.decode_rows):
                    self._decode(jobs, titles, max_new_tokens)
                    jobs = []
                elif pending:
                    pending.compact()
                if progress:
                    progress(min(start + batch_size, len(samples)), len(samples))
        return results
