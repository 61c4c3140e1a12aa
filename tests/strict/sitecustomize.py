"""Started by Python in every process whose PYTHONPATH names this folder (the tests' torchrun runs):
in a torchrun worker with STRICT_DIST=1, install the strict distributed mode of tests/strict_dist.py."""

import os
import sys
from pathlib import Path


if os.environ.get("STRICT_DIST") == "1" and "RANK" in os.environ:
    tests = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(tests), str(tests.parent)]
    import strict_dist

    strict_dist.install()
