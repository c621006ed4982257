"""``python -m benchmarks.compare``: the comparison harness's command line.

The harness lives in :mod:`benchmarks.harness` (``compare`` runs the table;
``train``, ``tasks``, ``models``, ``data``, ``optimizers``, ``plots``).
"""

import sys

from benchmarks.harness.compare import main

if __name__ == "__main__":
  sys.exit(main())
