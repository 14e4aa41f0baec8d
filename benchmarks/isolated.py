"""Isolated mode costs: an export in its image against the same export in-process, a no-op image
build, a rebuild after a source-only change, and the image sizes. Printed as ratios to targets.

    python benchmarks/isolated.py [--model resnet18] [--runs 3] [--input-size 3 224 224]

Needs a Docker engine and the dev install (torch, for the in-process export). Build settings come
from the TIMMX_* environment as for `timmx images build`. The source-only change is made in a
temporary copy of the timmx package (the tree is never touched); its image is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

TARGETS = {"isolated / in-process": 1.15, "no-op build (s)": 2.0, "source-only rebuild (s)": 30.0}
TOOLCHAIN = "onnx"


def timmx(args: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    """Wall seconds of one `timmx ARGS` run in a fresh process; raises if it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "timmx", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"timmx {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return seconds


def export_times(model: str, size: list[str], runs: int, work: Path) -> tuple[list, list]:
    base = ["export", "onnx", model, *(["--input-size", *size] if size else [])]
    timmx([*base, "-o", "warm.onnx", "--isolated"], work)  # builds the image if it is missing
    timmx([*base, "-o", "warm-local.onnx"], work)  # warms the page cache for in-process too
    local, isolated = [], []
    for _ in range(runs):  # interleaved, so background load hits both alike
        local.append(timmx([*base, "-o", "local.onnx"], work))
        isolated.append(timmx([*base, "-o", "isolated.onnx", "--isolated"], work))
    return local, isolated


def source_only_rebuild(repo_images: Path) -> float:
    """Build the image from a copy of timmx with one extra source file: only the last layers."""
    import timmx as package
    from timmx.images.engine import connect

    with tempfile.TemporaryDirectory(prefix="timmx-bench.") as tmp:
        copy = Path(tmp) / "timmx"
        shutil.copytree(
            Path(package.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__")
        )
        (copy / "_bench_marker.py").write_text(f'MARKER = "{uuid.uuid4().hex}"\n')
        env = {**os.environ, "PYTHONPATH": tmp, "TIMMX_IMAGES_DIR": str(repo_images)}
        probe = subprocess.run(
            [sys.executable, "-c", "import timmx; print(timmx.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert probe.stdout.strip().startswith(tmp), "the copy of timmx was not the one imported"
        seconds = timmx(["images", "build", TOOLCHAIN], env=env)
        tag = subprocess.run(
            [sys.executable, "-m", "timmx", "images", "list", "--json", TOOLCHAIN],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    rows = [r for r in json.loads(tag) if r["status"] == "present"]
    client = connect()
    for row in rows:  # the marker's image is of no further use
        client.images.remove(row["image"])
    return seconds


def image_sizes(names: list[str]) -> dict[str, float]:
    """GB per image, and the bytes their layers take once (shared layers counted once)."""
    from timmx.images.engine import connect
    from timmx.images.find import effective_settings, find_image
    from timmx.images.identity import BuildSettings, identify
    from timmx.images.recipes import get_recipe

    client = connect()
    sizes, layers = {}, {}
    for name in names:
        settings = effective_settings(client, name, BuildSettings.resolve())
        found = find_image(client, identify(get_recipe(name), settings))
        if found is None:
            continue
        sizes[name] = client.images.get(found.id).attrs["Size"] / 1e9
        for entry in client.api.history(found.id):
            key = entry["Id"] if entry["Id"] != "<missing>" else f"{found.id}:{entry['Created']}"
            layers[key] = entry["Size"]
    sizes["all, shared layers once"] = sum(layers.values()) / 1e9
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--input-size", nargs=3, default=None, metavar=("C", "H", "W"))
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]

    with tempfile.TemporaryDirectory(prefix="timmx-bench-work.") as tmp:
        local, isolated = export_times(args.model, args.input_size, args.runs, Path(tmp))
    timmx(["images", "build", TOOLCHAIN])
    noop = min(timmx(["images", "build", TOOLCHAIN]) for _ in range(3))
    rebuild = source_only_rebuild(repo / "images")
    sizes = image_sizes(["onnx", "torch"])

    local_s, isolated_s = statistics.median(local), statistics.median(isolated)
    results = {
        "isolated / in-process": isolated_s / local_s,
        "no-op build (s)": noop,
        "source-only rebuild (s)": rebuild,
    }
    print(f"export onnx {args.model}: in-process {local_s:.2f} s, isolated {isolated_s:.2f} s")
    print(
        f"  (medians of {args.runs}; in-process {[round(t, 2) for t in local]}, "
        f"isolated {[round(t, 2) for t in isolated]})"
    )
    for name, value in results.items():
        target = TARGETS[name]
        verdict = "ok" if value <= target else "MISSED"
        print(
            f"{name:26s} {value:7.2f}   target <= {target:g} ({value / target:.2f} of it) {verdict}"
        )
    for name, gb in sizes.items():
        print(f"image {name:24s} {gb:6.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
