"""The version of the ``optim-jaxdiff`` distribution: its one source.

hatch reads it into the wheel's and sdist's metadata (``[tool.hatch.version]`` in
pyproject.toml); ``optim.__version__`` and ``jaxdiff.__version__`` are this string, so a
checkout, an editable install and an installed wheel all report the same version.
"""

__version__ = "0.2.0.dev0"
