"""Fine-tuning a sampler towards a goal: one module per method family.

Public names in :mod:`jaxdiff.finetune`.
"""
