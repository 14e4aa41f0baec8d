"""`timmx list` and `timmx info` against upstream timmx 0.10.1, side by side in one run, as ratios.

    python benchmarks/list_info.py [--runs 5] [--peer-dir DIR]

Both run on this venv's torch and timm (the peer as in benchmarks/cli.py). Ours reads the model
index (timmx.model_index) from a fresh cache folder: its first run builds it (the "first use"
row, which imports timm as the peer always does); the medians are of the runs after it.
Runs are interleaved (ours, peer, ours, peer...) so that load on the machine hits both alike.

Targets (issue 24): `list 'vit_*'` <= 0.15x the peer's wall time, `info resnet18` <= 0.5x.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cli import ensure_peer, peer_arguments, timed

COMMANDS = {
    "list": (["list", "vit_*"], "list 'vit_*'", 0.15),
    "info": (["info", "resnet18"], "info resnet18", 0.5),
}


def main() -> None:
    args = peer_arguments(__doc__.splitlines()[0], runs=5)
    peer_dir = ensure_peer(args.peer_dir)
    python = [sys.executable, "-m", "timmx"]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        ours_env = {**base, "TIMMX_CACHE_DIR": str(cwd / "cache")}
        peer_env = {**base, "PYTHONPATH": str(peer_dir)}
        first = {
            what: timed([*python, *argv], cwd, ours_env) for what, (argv, *_) in COMMANDS.items()
        }
        times: dict[str, list[float]] = {}
        for _ in range(args.runs):
            for who, env in (("ours", ours_env), ("peer", peer_env)):
                for what, (argv, *_) in COMMANDS.items():
                    times.setdefault(f"{what} {who}", []).append(timed([*python, *argv], cwd, env))

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{'measure (median of ' + str(args.runs) + ')':28} {'first use':>9} {'timmx':>8} "
        f"{'0.10.1':>8} {'ratio':>7} {'target':>7}"
    )
    for what, (_, label, target) in COMMANDS.items():
        ours, peer = median[f"{what} ours"], median[f"{what} peer"]
        print(
            f"{label:28} {first[what]:8.2f}s {ours:7.2f}s {peer:7.2f}s {ours / peer:7.2f} "
            f"{'<=' + format(target, '.2f'):>7}"
        )


if __name__ == "__main__":
    main()
