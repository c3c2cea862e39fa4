"""``python -m benchmarks``: see bench.py and README.md."""

import sys

from benchmarks.bench import main

sys.exit(main())
