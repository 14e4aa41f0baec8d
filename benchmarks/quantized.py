"""Quantized artifacts against the float32 ONNX one: error, top-1 kept, size and latency.

    python benchmarks/quantized.py [--model resnet18] [--size 224] [--samples 64] [--runs 20]
                                   [--out benchmarks/results/quantized.md]

One model with random weights and re-randomised norm statistics (as the tests make them; timm
zero-initialises the last norm of residual blocks), saved as a local checkpoint: no network, no
pretrained weights. Calibration data: a seeded tensor file of 2 x SAMPLES random-ish images
(smooth random pixels plus noise, normalised with the model's mean/std); the int8 exports
calibrate on the first SAMPLES (`--calibration-samples`) and timmx verifies them on the rest,
the held-out half, which this script also measures every row on.

Rows: ONNX fp32 (the baseline), fp16, dynamic-int8 and int8 through `timmx.export("onnx", ...)`;
OpenVINO fp32, fp16 and int8 through `timmx.export("openvino", ...)` where timmx has that backend
and openvino imports (else a note says why the rows are missing). Each artifact runs here,
outside timmx: onnxruntime with one intra-op thread, OpenVINO's CPU plugin with
INFERENCE_NUM_THREADS 1 and INFERENCE_PRECISION_HINT f32. Columns: max abs error against
PyTorch (and over max|reference|), top-1 agreement with PyTorch on the held-out samples, the
artifact's size (every file the report lists) and median latency of RUNS runs at batch 1, the
last two also as ratios to the ONNX fp32 artifact measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ONNX_MODES = ("fp32", "fp16", "dynamic-int8", "int8")
OPENVINO_MODES = ("fp32", "fp16", "int8")
CALIBRATED = {"int8"}
SEED = 123


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--samples", type=int, default=64, help="calibration (and held-out)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per artifact")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/quantized.md")
    args = parser.parse_args()

    started = time.perf_counter()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="timmx-quantized-") as scratch:
        work = Path(scratch)
        os.chdir(work)  # timmx resolves paths against the current folder
        model, checkpoint, data = prepare(args.model, args.size, args.samples, work)
        held_out = data[args.samples :]
        with _torch().inference_mode():
            reference = model(held_out).numpy()
        rows = []
        for mode in ONNX_MODES:
            rows.append(measure("onnx", mode, args, checkpoint, held_out, reference))
        missing = openvino_missing()
        if missing:
            notes.append(f"OpenVINO rows skipped: {missing}.")
            print(f"note: {notes[-1]}", flush=True)
        else:
            for mode in OPENVINO_MODES:
                rows.append(measure("openvino", mode, args, checkpoint, held_out, reference))
    minutes = (time.perf_counter() - started) / 60
    text = render(rows, args, notes, minutes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")


def _torch():
    import torch

    return torch


def prepare(name: str, size: int, samples: int, work: Path):
    """The model (random weights, randomised norms) saved as a checkpoint, and a seeded
    calibration tensor file of 2 x `samples` random-ish images."""
    import timm
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))  # the repository's tests/
    from tests.conftest import randomize_norms

    torch.manual_seed(SEED)
    model = timm.create_model(name, pretrained=False).eval()
    randomize_norms(model)
    checkpoint = work / f"{name}.pth"
    torch.save(model.state_dict(), checkpoint)

    config = timm.data.resolve_data_config({}, model=model)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    generator = torch.Generator().manual_seed(SEED)
    count = 2 * samples
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    pixels = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pixels = pixels + 0.1 * torch.randn(count, 3, size, size, generator=generator)
    data = (pixels.clamp(0, 1) - mean) / std
    torch.save(data, work / "calibration.pt")
    return model, checkpoint, data


def openvino_missing() -> str | None:
    """Why the OpenVINO rows cannot run here; None when they can."""
    if importlib.util.find_spec("timmx.backends.openvino") is None:
        return "timmx has no openvino backend (src/timmx/backends/openvino.py) in this checkout"
    if importlib.util.find_spec("openvino") is None:
        return "openvino is not installed (pip install 'timmx[openvino]')"
    import timmx

    if "openvino" not in timmx.backends():
        return "the openvino backend did not register"
    return None


def measure(backend: str, mode: str, args, checkpoint: Path, held_out, reference) -> dict:
    import timmx
    from timmx.errors import TimmxError, VerificationError

    suffix = ".onnx" if backend == "onnx" else ".xml"
    output = Path(f"{backend}-{mode}{suffix}")
    options: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "input_size": (3, args.size, args.size),
        "output": str(output),
        "mode": mode,
    }
    if mode in CALIBRATED:
        options.update(calibration_data="calibration.pt", calibration_samples=args.samples)
    row: dict[str, Any] = {"backend": backend, "mode": mode}
    tick = time.perf_counter()
    try:
        result = timmx.export(backend, args.model, **options)
        verification = result.verification
        row["timmx"] = f"{verification.status} on {verification.inputs}"
    except VerificationError as exc:  # measured all the same, and said so
        row["timmx"] = f"verification failed: {exc.message.split(' No artifact')[0]}"
        result = timmx.export(backend, args.model, **options, verify=False)
    except TimmxError as exc:
        row["timmx"] = f"failed: {exc.message}"
        print(f"{backend} {mode}: {row['timmx']}", flush=True)
        return row
    row["export_s"] = time.perf_counter() - tick
    row["bytes"] = sum(a.bytes for a in result.artifacts)
    run = onnx_runner(output) if backend == "onnx" else openvino_runner(output)
    x = held_out.numpy()
    actual = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    error = float(np.abs(actual.astype(np.float64) - reference).max())
    row["max_abs"] = error
    row["max_rel"] = error / float(np.abs(reference).max())
    row["top1"] = float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
    row["held_out"] = len(x)
    row["latency_ms"] = latency(run, x[:1], args.runs)
    print(
        f"{backend} {mode}: {row['bytes'] / 1e6:.1f} MB, max abs {error:.3g}, "
        f"top-1 {row['top1']:.0%}, {row['latency_ms']:.1f} ms; timmx {row['timmx']}",
        flush=True,
    )
    return row


def onnx_runner(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    dtype = np.float16 if source.type == "tensor(float16)" else np.float32
    return lambda x: session.run(None, {source.name: x.astype(dtype)})[0].astype(np.float32)


def openvino_runner(path: Path):
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: np.ascontiguousarray(x, np.float32)})[output])

    return run


def latency(run, x: np.ndarray, runs: int) -> float:
    """Median milliseconds of `runs` calls, after 3 warm-up calls."""
    for _ in range(3):
        run(x)
    times = []
    for _ in range(runs):
        tick = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - tick) * 1000)
    return statistics.median(times)


def render(rows: list[dict], args, notes: list[str], minutes: float) -> str:
    import onnxruntime
    import timm
    import torch

    import timmx

    versions = f"torch {torch.__version__}, timm {timm.__version__}, onnxruntime "
    versions += onnxruntime.__version__
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        versions += f", openvino {openvino.get_version().split('-')[0]}"
    base = next(r for r in rows if r["backend"] == "onnx" and r["mode"] == "fp32")
    lines = [
        "# Quantized artifacts against ONNX fp32",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, timmx {timmx.__version__}, {versions}, "
        f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores; "
        f"{minutes:.0f} min (`python benchmarks/quantized.py`).",
        "",
        f"{args.model} at 3x{args.size}x{args.size}, random weights with re-randomised norms "
        f"(local checkpoint, no pretrained download). Calibration: the first {args.samples} of "
        f"{2 * args.samples} seeded random-ish images (smooth random pixels plus noise, "
        f"normalised with the model's mean/std); every row is measured here, outside timmx, on "
        f"the other {args.samples} (held out of calibration; the int8 rows' own verification "
        "ran on them too) against PyTorch eager. Latency: median of "
        f"{args.runs} runs at batch 1 on one thread (onnxruntime intra_op_num_threads=1; "
        "OpenVINO INFERENCE_NUM_THREADS=1, INFERENCE_PRECISION_HINT f32). Ratios are against "
        "the ONNX fp32 artifact in onnxruntime, measured in the same run. The host is shared: "
        "latencies are indicative.",
        "",
        "| artifact | size | smaller than onnx fp32 | max abs error | error / max\\|ref\\| "
        "| top-1 kept | latency | speed-up vs onnx fp32 | timmx verification |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = f"{row['backend']} {row['mode']}"
        if "bytes" not in row:
            lines.append(f"| {name} | | | | | | | | {row['timmx']} |")
            continue
        lines.append(
            f"| {name} | {row['bytes'] / 1e6:.1f} MB | {base['bytes'] / row['bytes']:.2f}x "
            f"| {row['max_abs']:.3g} | {row['max_rel']:.2%} "
            f"| {row['top1']:.1%} ({round(row['top1'] * row['held_out'])}/{row['held_out']}) "
            f"| {row['latency_ms']:.1f} ms | {base['latency_ms'] / row['latency_ms']:.2f}x "
            f"| {row['timmx']} |"
        )
    lines += ["", *targets(rows, base), *notes]
    return "\n".join(lines).rstrip() + "\n"


def targets(rows: list[dict], base: dict) -> list[str]:
    """The stated target for int8: at least 3x smaller than fp32, top-1 kept on >= 95%."""
    found = []
    for row in rows:
        if row["mode"] != "int8" or "bytes" not in row:
            continue
        smaller = base["bytes"] / row["bytes"]
        met = smaller >= 3 and row["top1"] >= 0.95
        found.append(
            f"Target for {row['backend']} int8 (>= 3x smaller than ONNX fp32, top-1 kept on "
            f">= 95% of held-out samples): {'met' if met else 'MISSED'} ({smaller:.2f}x, "
            f"{row['top1']:.1%})."
        )
    return found


if __name__ == "__main__":
    main()
