"""Command-line entry point of :mod:`mvssl_core.mi_not_enough`, where the code and its description live
(``--help`` lists the options; the command recorded in the results file names this script)."""

import sys

from mvssl_core.mi_not_enough import main

if __name__ == "__main__":
    sys.exit(main())
