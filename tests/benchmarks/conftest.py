"""The benchmarks' own modules (benchmarks/workload.py) import as top-level modules, as the
benchmark scripts import them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
