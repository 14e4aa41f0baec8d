"""`timmx bench` on a trained model: its overhead against a bare onnxruntime loop, and the time
to bench 6 artifacts on 500 images, side by side in one run.

    python benchmarks/bench_digits.py prepare DIR    # the README's example data and model
    python benchmarks/bench_digits.py [--threads N] [--workdir DIR]

`prepare` writes scikit-learn's digits as two ImageFolders (DIR/train, DIR/test: 500 held-out
images at 32x32) and DIR/digits.pth, test_resnet trained on the train split (about half a minute
on one core). The benchmark then exports the 6 artifacts of tests/bench_digits.py (fp32 and int8
of onnx, litert, openvino) and prints:
- overhead: timmx bench's median batch-1 latency of the fp32 ONNX artifact over a bare
  `InferenceSession.run` loop timed the same way (perf_counter per call, same input, same
  threads), alternated 5 times; the median ratio (target <= 1.10)
- `timmx bench DIR/out --data DIR/test` (the CLI, 6 artifacts, 500 images, default settings)
  wall time (target < 180 s on 2 cores)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.bench_digits: the same data, model and artifacts

from tests.bench_digits import GOOD, export_artifacts, train  # noqa: E402

RUNS, WARMUP, ROUNDS = 300, 30, 5


def prepare(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    digits = train(folder)
    print(
        f"{folder}: train/, test/ ({digits.test}), digits.pth: held-out top-1 {digits.accuracy:.1%}"
    )


def bare_onnxruntime(artifact: Path, x, threads: int) -> float:
    """Median ms of session.run at batch 1, timed as timmx.bench.timing times its runtimes."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(WARMUP):
        session.run(None, {name: x})
    times = np.empty(RUNS)
    for i in range(RUNS):
        start = time.perf_counter()
        session.run(None, {name: x})
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3)


def overhead(root: Path, threads: int) -> float:
    import timmx
    from timmx.bench.artifacts import resolve
    from timmx.bench.data import LabelledImages, preprocess, scan
    from timmx.bench.eager import rebuild

    artifact = root / "out" / "digits.onnx"
    (target,) = resolve([artifact])
    prepared = rebuild(target.job, target.workspace, artifact)
    subset = scan(root / "test", 50, 0, None)  # the bench times the first image of its set
    first = LabelledImages(subset.root, subset.classes, subset.files[:1], subset.labels[:1])
    x = preprocess(first, prepared.data_config, prepared.summary.input_size, False).numpy()
    ratios = []
    for _ in range(ROUNDS):
        report = timmx.bench(
            artifact, data=root / "test", limit=50, threads=threads, runs=RUNS, warmup=WARMUP
        )
        ours = report.rows[0].latency_ms_p50
        bare = bare_onnxruntime(artifact, x, threads)
        ratios.append(ours / bare)
        print(f"  timmx bench {ours:.4f} ms, bare onnxruntime {bare:.4f} ms: {ours / bare:.3f}")
    return statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", nargs="?", choices=["prepare", "run"], default="run")
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, help="reuse a prepared folder (with out/)")
    args = parser.parse_args()
    if args.command == "prepare":
        if args.folder is None:
            parser.error("prepare needs a folder")
        prepare(args.folder)
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="timmx-bench-"))
    if not (root / "digits.pth").is_file():
        prepare(root)
    missing = [name for name in GOOD if not (root / "out" / name).exists()]
    if missing:
        export_artifacts(root, missing)
    print(f"overhead (threads {args.threads}), {ROUNDS} rounds of {RUNS} runs:")
    ratio = overhead(root, args.threads)
    start = time.perf_counter()
    command = [sys.executable, "-m", "timmx", "bench", "out", "--data", "test"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"timmx bench failed: {done.stderr[-800:]}")
    print(done.stdout)
    print(f"overhead ratio (timmx / bare onnxruntime, median): {ratio:.3f} (target <= 1.10)")
    print(f"6 artifacts x 500 images: {seconds:.1f} s (target < 180 s)")


if __name__ == "__main__":
    main()
