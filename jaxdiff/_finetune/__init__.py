"""Fine-tuning a sampler towards a goal: one module per method family (public names in jaxdiff.finetune)."""
