"""The data stage: sources, raw rows, landing folder, cleaning, sequences, corpus."""
