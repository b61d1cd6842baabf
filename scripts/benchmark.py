"""Benchmark every attention variant against its references, the MQAR scaling curve and the
framework overhead: ``python scripts/benchmark.py [--smoke] [--out FILE]``; one section alone with
``--scaling``, ``--overhead``, ``--mfu`` or ``--ablation-timing``.

A thin entry point; the logic lives in ``attnexp.bench.suite`` (also installed as ``attnexp-bench``).
"""

import sys
from pathlib import Path

# Run from a checkout without installing: make the package beside this script importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnexp.bench.suite import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
