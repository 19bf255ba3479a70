"""``python -m jaxdiff``: see :mod:`jaxdiff.cli`."""

import sys

from jaxdiff.cli import main

if __name__ == "__main__":
  sys.exit(main())
