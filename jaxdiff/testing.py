"""jaxdiff.testing (public namespace; implementation in private modules)."""

__all__: list[str] = []
