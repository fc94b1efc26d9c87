"""Pre-training experiments of part 2 of the book: the command-line entry point.

The code (recipes, experiments, runner) is :mod:`mvssl_core.ssl_runs`; ``--help`` lists the options.

    python scripts/experiments/ssl_runs.py                      # every experiment -> results/ssl/<name>.json
    python scripts/experiments/ssl_runs.py --smoke --out-dir /tmp/r   # seconds
"""

import sys

from mvssl_core.ssl_runs import main

if __name__ == "__main__":
    sys.exit(main())
