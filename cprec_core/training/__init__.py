"""Training loops: the CPT plan and trainer, SFT, the next-item trainer, checkpoints."""
