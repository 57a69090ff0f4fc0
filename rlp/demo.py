"""Entry point of ``make demo`` (``python -m rlp.demo``); see :mod:`rlp.tools.demo`."""

import sys

from rlp.tools.demo import main

if __name__ == '__main__':
    sys.exit(main())
