"""Bilevel optimization: one private module per method family; public names in optim.bilevel."""
