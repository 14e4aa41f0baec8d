"""`timmx build` against the same exports run one after another, side by side in one run.

    python benchmarks/build.py [--isolated]

20 jobs: 5 small models x onnx, torch-export, torchscript, litert, at 64x64, from checkpoints.
Prints wall times and ratios:
- `timmx build --jobs 1` against the 20 `timmx export` commands one after another (target <= 0.6)
- a no-op re-run (target <= 2 s)
- `--jobs 2` against `--jobs 1`
- with --ray: the same build as Ray tasks, one at a time, on a one-node cluster this script
  starts (needs timmx[ray]); the overhead per job against the local `--jobs 1`
With --isolated every job runs in its image (the images must be built), both ways.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ["resnet18", "mobilenetv3_small_100", "efficientnet_b0", "regnetx_002", "resnet10t"]
TARGETS = {
    "onnx": (".onnx", []),
    "torch-export": (".pt2", []),
    "torchscript": (".pt", []),
    "litert": (".tflite", []),
}
TIMMX = [sys.executable, "-m", "timmx"]


def timed(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr[-600:]}")
    return time.perf_counter() - start


def write_project(root: Path, isolated: bool) -> None:
    (root / "ckpt").mkdir()
    code = (
        "import timm, torch, sys\n"
        "for name in sys.argv[1:]:\n"
        "    torch.manual_seed(0)\n"
        "    m = timm.create_model(name, num_classes=10)\n"
        "    torch.save(m.state_dict(), f'ckpt/{name}.pth')\n"
    )
    subprocess.run([sys.executable, "-c", code, *MODELS], cwd=root, check=True)
    lines = ["[defaults]", "input-size = [3, 64, 64]", "num-classes = 10"]
    if isolated:
        lines.append("isolated = true")
    for name in MODELS:
        lines += ["", "[[models]]", f'name = "{name}"', f'checkpoint = "ckpt/{name}.pth"']
    for backend in TARGETS:
        lines += ["", "[[targets]]", f'backend = "{backend}"']
    (root / "timmx.toml").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isolated", action="store_true", help="every job in its image")
    parser.add_argument("--ray", action="store_true", help="also as tasks on a local Ray node")
    args = parser.parse_args()
    extra = ["--isolated"] if args.isolated else []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root, args.isolated)
        sequential = 0.0
        for name in MODELS:
            for backend, (suffix, flags) in TARGETS.items():
                out = f"seq/{name}/{backend}/{name}{suffix}"
                argv = [*TIMMX, "export", backend, name, "-c", f"ckpt/{name}.pth"]
                argv += ["--num-classes", "10", "--input-size", "3", "64", "64", "-o", out]
                sequential += timed([*argv, *flags, *extra], root)
        one = timed([*TIMMX, "build", "--jobs", "1"], root)
        noop = timed([*TIMMX, "build"], root)
        shutil.rmtree(root / "dist")
        two = timed([*TIMMX, "build", "--jobs", "2"], root)
        on_ray = ray_build(root) if args.ray else None
    jobs = len(MODELS) * len(TARGETS)
    mode = "isolated" if args.isolated else "in-process"
    print(f"{jobs} jobs, {mode}, 64x64")
    print(f"{'measure':48} {'seconds':>8} {'ratio':>7} {'target':>7}")
    print(f"{'20 x timmx export, one after another':48} {sequential:8.1f}")
    print(f"{'timmx build --jobs 1':48} {one:8.1f} {one / sequential:7.2f} {'<=0.60':>7}")
    print(f"{'timmx build (no-op re-run)':48} {noop:8.2f} {'':>7} {'<=2 s':>7}")
    print(f"{'timmx build --jobs 2 (vs --jobs 1)':48} {two:8.1f} {two / one:7.2f}")
    if on_ray is not None:
        print(f"{'timmx build --ray, one task at a time (vs --jobs 1)':48} {on_ray:8.1f} ", end="")
        print(f"{on_ray / one:7.2f}")
        print(f"{'  Ray overhead per job':48} {(on_ray - one) / jobs:8.2f}")


def ray_build(root: Path) -> float:
    """`timmx build --ray ADDRESS --jobs 1` on a one-node cluster with 2 CPUs, started here."""
    from ray.cluster_utils import Cluster

    shutil.rmtree(root / "dist")
    temp = tempfile.mkdtemp(prefix="tx-ray-")  # a socket path must stay under 108 bytes
    os.environ["TMPDIR"] = temp
    try:
        head = {"num_cpus": 2, "object_store_memory": 400 * 1024**2, "include_dashboard": False}
        nodes = Cluster(initialize_head=True, connect=False, head_node_args=head)
        try:
            return timed([*TIMMX, "build", "--ray", nodes.address, "--jobs", "1"], root)
        finally:
            nodes.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
