"""Run every benchmark in turn, or those named: `python -m benchmarks [name ...]`."""

import importlib
import pkgutil
import sys
from pathlib import Path

names = sys.argv[1:] or sorted(
    module.name for module in pkgutil.iter_modules([str(Path(__file__).parent)]) if not module.name.startswith("_")
)
sys.argv = sys.argv[:1]  # each benchmark parses its own options; here they run on their defaults
for name in names:
    print(f"\n=== {name} ===", flush=True)
    importlib.import_module(f"benchmarks.{name}").main()
