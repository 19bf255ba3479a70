"""Few-step generators: one module per method family (public names in jaxdiff.distill)."""
