"""``python -m mvssl_core``: see :mod:`mvssl_core.cli`."""

import sys

from mvssl_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
