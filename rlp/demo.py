"""Entry point of ``make demo`` (``python -m rlp.demo``); see :mod:`rlp.run.demo`."""

import sys

from rlp.run.demo import main

if __name__ == '__main__':
    sys.exit(main())
