"""Entry point of `composer -m rlp.train RECIPE [key=value ...]` and `python -m rlp.train`; see :mod:`rlp.run.train`."""

import sys

from rlp.run.train import main

if __name__ == '__main__':
    sys.exit(main())
