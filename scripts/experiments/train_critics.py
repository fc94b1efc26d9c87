"""Command-line entry point of :mod:`mvssl_core.train_critics`, where the code and its description live
(``--help`` lists the options; the command recorded in the results file names this script)."""

import sys

from mvssl_core.train_critics import main

if __name__ == "__main__":
    sys.exit(main())
