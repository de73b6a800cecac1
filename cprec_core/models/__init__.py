"""Language models and tokenizers, loaded offline."""
