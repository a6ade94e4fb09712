"""C{python -m indiserv}: the C{indiserv} command."""

import sys

from indiserv.cli import main

if __name__ == "__main__":
    main(["indiserv", *sys.argv[1:]])
