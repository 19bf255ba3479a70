"""optim.data_scores: which training examples matter (Data Diet: GraNd and EL2N scores).

:func:`grand` (per-example gradient norms) and :func:`el2n` (per-example error norms) are
vmapped over the examples and averaged over several runs early in training;
:func:`keep_indices` prunes a data set by score (or at random, the baseline).
:func:`coherence` / :func:`gradient_coherence` measure how aligned the per-example
gradients of a sample are (Chatterjee & Zielinski); :func:`slow_learnable` (k-means,
:func:`kmeans`, on early outputs) and :func:`upsample` change the training distribution
as USEFUL does (Nguyen et al.).
"""

from optim._coherence import coherence, gradient_coherence
from optim._data_scores import el2n, grand, keep_indices
from optim._useful import KMeansResult, kmeans, slow_learnable, upsample

__all__: list[str] = [
  "el2n",
  "grand",
  "keep_indices",
  # Coherence of per-example gradients (Chatterjee & Zielinski).
  "coherence",
  "gradient_coherence",
  # USEFUL: early-output clustering and upsampling (Nguyen et al.).
  "KMeansResult",
  "kmeans",
  "slow_learnable",
  "upsample",
]
