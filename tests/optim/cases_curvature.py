"""Curvature-based optimizers (issue 4) in the shared generic table."""

from tests.optim.cases import OptCase

CURVATURE_CASES: list[OptCase] = []
