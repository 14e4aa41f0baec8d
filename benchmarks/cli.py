"""Start-up and export speed of the timmx CLI, printed as medians and ratios to the targets.

    python benchmarks/cli.py [--runs N]

Targets (from the foundation issue, measured on a 2-core machine):
- `timmx --help` well under 0.5 s (a comparable tool that imports torch at start-up: ~5 s);
- `timmx export onnx resnet18` with verification no slower than ~10.7 s (what a comparable tool
  takes for the same export without verification).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMMX = [sys.executable, "-m", "timmx"]


def median_seconds(argv: list[str], runs: int, cwd: Path) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of --help (export: runs // 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        rows = [
            ("timmx --help", median_seconds([*TIMMX, "--help"], args.runs, cwd), 0.5),
            (
                "timmx export onnx resnet18 (export + verify)",
                median_seconds(
                    [*TIMMX, "export", "onnx", "resnet18", "-o", "r18.onnx"],
                    max(args.runs // 2, 1),
                    cwd,
                ),
                10.7,
            ),
        ]
    print(f"{'measure':48} {'median s':>9} {'target s':>9} {'ratio':>6}")
    for name, seconds, target in rows:
        print(f"{name:48} {seconds:9.2f} {target:9.2f} {seconds / target:6.2f}")


if __name__ == "__main__":
    main()
