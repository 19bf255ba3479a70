"""optim.curvature: curvature linear operators on pytrees and the estimators built on them."""

# --- operators & estimators (issue 2) ---

# --- M-FAC static inverse-Hessian products (issue 4) ---

__all__: list[str] = []
