"""``python -m bench``: the entry point; the benchmark itself is ``bench.run``."""

import sys

from bench.run import main

sys.exit(main())
