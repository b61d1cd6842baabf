"""Compare the runs of one or more sweeps: ``python scripts/compare.py SWEEP_DIR [...] [--out DIR]``.

A thin entry point; the logic lives in ``attnexp.report`` (also installed as ``attnexp-compare``).
"""

import sys
from pathlib import Path

# Run from a checkout without installing: make the package beside this script importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnexp.report.build import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
