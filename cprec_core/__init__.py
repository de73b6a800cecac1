"""CPRec core: data, sequences, prompts, models, training and evaluation. No Dagster here."""
