"""optim: optimizers as optax transformations and the curvature toolkit under them."""

from optim import curvature, losses, schedules

# --- first-order optimizers (issue 3) ---

# --- curvature-based optimizers (issue 4) ---

__all__ = ["curvature", "losses", "schedules"]
