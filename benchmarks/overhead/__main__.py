"""``python -m benchmarks.overhead``: the overhead table (see the package)."""

import sys

from benchmarks.overhead import main

sys.exit(main())
