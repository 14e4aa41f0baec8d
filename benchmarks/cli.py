"""timmx against upstream timmx 0.10.1 (the peer), side by side in one run, as ratios.

    python benchmarks/cli.py [--runs 3] [--peer-dir DIR]

Both run on this venv's torch, timm and ONNX stack: the peer is installed with
`pip install --no-deps --target DIR timmx==0.10.1` (done here when DIR lacks it) and run as
`PYTHONPATH=DIR python -m timmx`. Runs are interleaved (ours, peer, ours, peer...) so that load
on the machine hits both alike; each number is a median of wall times of whole processes.

Targets (the seams issue): `export onnx resnet18 -c ck.pth` with verification <= 0.8x the peer's;
`timmx --help` <= 1/20 of the peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = "timmx==0.10.1"


def ensure_peer(folder: Path) -> Path:
    if not (folder / "timmx" / "__init__.py").exists():
        print(f"installing the peer {PEER} into {folder}", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        subprocess.run([*pip, "--target", str(folder), PEER], check=True)
    return folder


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-400:]}")
    return seconds


def peer_arguments(description: str, runs: int) -> argparse.Namespace:
    """--runs and --peer-dir, the arguments of every side-by-side benchmark with the peer."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs, help="runs of each command (median)")
    parser.add_argument(
        "--peer-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "timmx-peer-0.10.1",
        help="where the peer is (installed there when missing)",
    )
    return parser.parse_args()


def main() -> None:
    args = peer_arguments(__doc__.splitlines()[0], runs=3)
    peer_dir = ensure_peer(args.peer_dir)
    python = [sys.executable, "-m", "timmx"]
    ours_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    peer_env = {**ours_env, "PYTHONPATH": str(peer_dir)}

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import timm, torch; torch.manual_seed(0); "
                "torch.save(timm.create_model('resnet18').state_dict(), 'ck.pth')",
            ],
            cwd=cwd,
            check=True,
        )
        times: dict[str, list[float]] = {}
        report: dict = {}
        for run in range(args.runs):
            for who, env in (("ours", ours_env), ("peer", peer_env)):
                flags = (
                    ["-c", "ck.pth", "-o", f"{who}{run}.onnx"]
                    if who == "ours"
                    else ["--checkpoint", "ck.pth", "--output", f"{who}{run}.onnx"]
                )
                export = [*python, "export", "onnx", "resnet18", *flags]
                times.setdefault(f"export {who}", []).append(timed(export, cwd, env))
                times.setdefault(f"help {who}", []).append(timed([*python, "--help"], cwd, env))
            report = json.loads((cwd / f"ours{run}.onnx.json").read_text())

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{'measure (median of ' + str(args.runs) + ')':44} {'timmx':>8} {'0.10.1':>8} "
        f"{'ratio':>7} {'target':>7}"
    )
    for what, label, target in (
        ("export", "export onnx resnet18 -c ck.pth (+verify)", "<=0.80"),
        ("help", "--help", "<=0.05"),
    ):
        ours, peer = median[f"{what} ours"], median[f"{what} peer"]
        print(f"{label:44} {ours:7.2f}s {peer:7.2f}s {ours / peer:7.2f} {target:>7}")
    timings = report.get("timings", {})
    parts = {k: v for k, v in timings.items() if k != "total_s"}
    print(
        "last report's timings: "
        + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        + f"; sum {sum(parts.values()):.2f} of total_s {timings.get('total_s', 0):.2f}"
    )


if __name__ == "__main__":
    main()
