"""optim.data_scores: which training examples matter (Data Diet: GraNd and EL2N scores).

:func:`grand` (per-example gradient norms) and :func:`el2n` (per-example error norms) are
vmapped over the examples and averaged over several runs early in training;
:func:`keep_indices` prunes a data set by score (or at random, the baseline).
"""

from optim._data_scores import el2n, grand, keep_indices

__all__: list[str] = ["el2n", "grand", "keep_indices"]
