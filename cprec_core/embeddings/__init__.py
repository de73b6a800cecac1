"""LLM item embeddings: each item's title through a language model (the base model or a CPT
adapter), the item representations the text systems' sequential recommenders read."""
