"""LLM systems on the fixed candidate sets: likelihood ranking with one shared prompt prefix.

For a test case the hybrid prompt (history + the 20 candidates, as in SFT) is run once; its
KV cache is repeated 20 times and the 20 candidate titles (+ EOS) are scored in one batched
forward. Each candidate gets the summed log-probability of its tokens and the mean per token
(length-normalised); ranking by either gives HR@1/3/5 and NDCG@3/5 with ValidRatio 1 by
construction. Generation with ValidRatio (LLaRA's protocol) is the next step of issue 5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer

from cprec_core.collab.train_sasrec import load_sasrec
from cprec_core.config import Profile
from cprec_core.models.hybrid import Projector, add_placeholder_token, hybrid_embeds
from cprec_core.models.loader import load_base_model, resolve_dtype
from cprec_core.sft_data import SFTSample, render


@dataclass
class LLMScorer:
    """A base model with an SFT adapter and projector, ready to score candidates."""

    model: torch.nn.Module
    tokenizer: object
    projector: Projector
    item_table: torch.Tensor
    local: dict[int, int]
    placeholder_id: int
    dtype: torch.dtype

    @classmethod
    def load(cls, profile: Profile, slug: str, system: str) -> "LLMScorer":
        folder = profile.root / "sft" / system / slug
        if not (folder / "adapter" / "adapter_model.safetensors").is_file():
            raise FileNotFoundError(f"{folder}: no SFT adapter; materialise it first")
        dtype = resolve_dtype(profile.sft.dtype, "cpu" if profile.device == "cpu" else "cuda")
        tokenizer = AutoTokenizer.from_pretrained(profile.corpus_dir / "tokenizer")
        base = load_base_model(profile.model.name, profile.cache_dir, dtype, tokenizer,
                               profile.model.trust_remote_code)
        placeholder_id = add_placeholder_token(tokenizer, base)
        model = PeftModel.from_pretrained(base, folder / "adapter").eval()
        sasrec, index = load_sasrec(profile.domain_dir("sasrec", slug))
        table = sasrec.item_embeddings().float()
        projector = Projector(table.shape[1], base.get_input_embeddings().embedding_dim)
        projector.load_state_dict(load_file(folder / "projector.safetensors"))
        return cls(model, tokenizer, projector.eval(), table,
                   {item: j + 1 for j, item in enumerate(index)}, placeholder_id, dtype)

    @torch.no_grad()
    def candidate_logprobs(self, sample: SFTSample, titles: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
        """(summed, mean) log-probability of each candidate title after the hybrid prompt."""
        prompt, slots = render(sample, titles, hybrid=True)
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        slot_items = torch.tensor([self.local[i] for i in slots])
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16)
        with autocast:
            embeds = hybrid_embeds(self.model.get_base_model(), self.projector, self.item_table,
                                   ids, slot_items, self.placeholder_id, hybrid=True)
            out = self.model(inputs_embeds=embeds, use_cache=True)
        n = len(sample.candidates)
        conts = [self.tokenizer(" " + titles[c], add_special_tokens=False)["input_ids"]
                 + [self.tokenizer.eos_token_id] for c in sample.candidates]
        width = max(len(c) for c in conts)
        cont = torch.full((n, width), self.tokenizer.eos_token_id, dtype=torch.long)
        valid = torch.zeros((n, width), dtype=torch.bool)
        for k, c in enumerate(conts):
            cont[k, :len(c)] = torch.tensor(c)
            valid[k, :len(c)] = True
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        prefix = ids.shape[1]
        mask = torch.cat([torch.ones(n, prefix, dtype=torch.long), valid.long()], dim=1)
        with autocast:
            logits = self.model(input_ids=cont, attention_mask=mask, cache=cache,
                                position_ids=torch.arange(prefix, prefix + width).expand(n, -1),
                                use_cache=False).logits.float()
        # the first continuation token is predicted by the prompt's last position
        first = torch.log_softmax(out.logits[0, -1].float(), -1)[cont[:, 0]]
        rest = torch.log_softmax(logits[:, :-1], -1).gather(2, cont[:, 1:, None]).squeeze(2)
        token_lp = torch.cat([first[:, None], rest], dim=1) * valid
        summed = token_lp.sum(1)
        return summed.numpy(), (summed / valid.sum(1)).numpy()


def write_scores(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
