"""A sweep over timm's families x backends, with default options, in this process's venv.

    python benchmarks/sweep.py [--models a,b] [--backends onnx,litert] [--size 128]
                               [--out benchmarks/results/sweep.md]

For each model: random weights with re-randomised norm statistics (timm zero-initialises the
last norm of residual blocks, which would hide whole branches), saved as a checkpoint; then
`timmx.export(BACKEND, MODEL, checkpoint=...)` per backend with its defaults, at SIZE x SIZE
where the model runs at that size, else at its default input size. Each cell is one of: pass,
skipped or partial (timmx could not check the numerics: its note says why), verify-fail
(timmx's own check refused the artifact), export-fail (the converter failed, one line), refused
(another one-line error) or crash (anything else, the process dying included).

Every passed artifact is also compared here, independently of timmx, with timm eager (the model
before reparameterization) on a seeded input: onnxruntime, torch.export.load, torch.jit.load and
the LiteRT interpreter. Core ML has no runtime on Linux: its numbers are the report's (timmx's
MIL reference evaluator), and its default precision is float16, whose error relative to the
output's scale is listed per model. Each model runs in a child process, so that a converter that
kills its process costs one cell, not the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODELS = (
    # CNNs
    "resnet18",
    "resnet50d",
    "mobilenetv3_large_100",
    "mobilenetv3_small_100",
    "mobilenetv4_conv_small",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "convnext_atto",
    "regnety_002",
    "ghostnet_100",
    "densenet121",
    "cspdarknet53",
    "rexnet_100",
    "hrnet_w18_small",
    # ViTs
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    # hybrids
    "efficientvit_b0",
    "edgenext_xx_small",
    "levit_128s",
    "mobilevit_xxs",
    "efficientformerv2_s0",
    "coatnet_nano_rw_224",
    # reparameterizable
    "repvgg_a0",
    "mobileone_s0",
    "fastvit_t8",
    "repghostnet_050",
)
BACKENDS = ("onnx", "torch-export", "torchscript", "litert", "coreml")
SUFFIX = {
    "onnx": ".onnx",
    "torch-export": ".pt2",
    "torchscript": ".pt",
    "litert": ".tflite",
    "coreml": ".mlpackage",
}
OWN_CHECK = {  # where this script runs the artifact itself
    "onnx": "onnxruntime",
    "torch-export": "torch.export.load",
    "torchscript": "torch.jit.load",
    "litert": "LiteRT interpreter",
    "coreml": "report (timmx.mil_reference)",
}
FP32_BOUND = 1e-4  # relative to max|reference|: what the tests accept for float32 artifacts
FP16_BOUND = 1e-2  # timmx's float16 rtol
SEED = 123


# The parent: one child per model, the table.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.md"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backends {unknown}: choose from {', '.join(BACKENDS)}")
    if args.child:
        run_model(args.child, backends, args.size, args.work, args.results)
        return

    models = [m for m in args.models.split(",") if m]
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="timmx-sweep-") as scratch:
        for model in models:
            tick = time.perf_counter()
            rows[model] = sweep_model(model, backends, args.size, Path(scratch), args.timeout)
            cells = rows[model]["cells"]
            summary = ", ".join(f"{b} {cells[b]['status']}" for b in backends if b in cells)
            print(f"{model}: {summary} ({time.perf_counter() - tick:.0f} s)", flush=True)
    minutes = (time.perf_counter() - started) / 60
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, backends, args.size, minutes))
    print(f"wrote {args.out}")


def sweep_model(
    model: str, backends: list[str], size: int, scratch: Path, timeout: int
) -> dict[str, Any]:
    """Run the model's cells in children; a child that dies costs the cell it was in."""
    work = scratch / model
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    row: dict[str, Any] = {"cells": {}}
    pending = list(backends)
    while pending:
        argv = [sys.executable, __file__, "--child", model, "--backends", ",".join(pending)]
        argv += ["--size", str(size), "--work", str(work), "--results", str(results)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
            ended = f"the process ended with code {done.returncode}"
            tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
        except subprocess.TimeoutExpired:
            ended, tail = f"no end after {timeout} s", []
        for line in results.read_text().splitlines() if results.exists() else []:
            record = json.loads(line)
            if record.get("backend") is None:
                row.update(record)
            else:
                row["cells"][record["backend"]] = record
        pending = [b for b in backends if b not in row["cells"]]
        if not pending:
            break
        if "input" not in row:  # the model itself could not be made: every cell says why
            for backend in pending:
                row["cells"][backend] = crash(backend, ended, tail)
            break
        row["cells"][pending[0]] = crash(pending[0], ended, tail)
        pending = pending[1:]
    return row


def crash(backend: str, ended: str, tail: list[str]) -> dict[str, Any]:
    last = f": {tail[0][:200]}" if tail else ""
    return {"backend": backend, "status": "crash", "message": f"{ended}{last}"}


# The child: one model, its backends, one JSON line per cell.


def run_model(name: str, backends: list[str], size: int, work: Path, results: Path) -> None:
    import timm
    import torch

    os.chdir(work)
    torch.manual_seed(7)
    model = timm.create_model(name, pretrained=False)
    randomize_norms(model)
    model.eval()
    checkpoint = work / "checkpoint.pth"
    torch.save(model.state_dict(), checkpoint)
    shape = input_shape(model, size)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(SEED))
    with torch.inference_mode():
        reference = model(x).numpy()
    scale = float(abs(reference).max())
    record = {"backend": None, "input": list(shape), "scale": scale}
    write(results, {**record, "torch_fp16_rel": torch_half_error(model, shape)})
    for backend in backends:
        write(results, run_cell(name, backend, checkpoint, shape, x.numpy(), reference, work))


def run_cell(name, backend, checkpoint, shape, x, reference, work: Path) -> dict[str, Any]:
    import timmx
    from timmx.errors import ExportFailedError, TimmxError, VerificationError

    artifact = work / f"{name}{SUFFIX[backend]}"
    cell: dict[str, Any] = {"backend": backend}
    tick = time.perf_counter()
    try:
        result = timmx.export(
            backend, name, checkpoint=str(checkpoint), input_size=shape, output=str(artifact)
        )
    except VerificationError as exc:
        cell.update(status="verify-fail", message=exc.message, report_rel=_rel(exc.message))
    except ExportFailedError as exc:
        cell.update(status="export-fail", message=exc.message)
    except TimmxError as exc:
        cell.update(status="refused", message=exc.message)
    except Exception as exc:
        cell.update(status="crash", message=f"{type(exc).__name__}: {exc}"[:300])
    else:
        verification = result.verification
        cell.update(
            status="pass" if verification.status == "passed" else verification.status,
            message=verification.note,
            report_rel=verification.worst("max_rel_error"),
            report_abs=verification.worst("max_abs_error"),
            runtime=verification.runtime,
        )
        if backend != "coreml":
            try:
                actual = run_artifact(backend, artifact, x)
                cell.update(compare(actual, reference))
            except Exception as exc:
                cell["own_error"] = f"{type(exc).__name__}: {exc}"[:300]
    cell["seconds"] = round(time.perf_counter() - tick, 1)
    return cell


def run_artifact(backend: str, artifact: Path, x):
    """The artifact's output on `x`, in its runtime, without timmx."""
    import numpy as np
    import torch

    if backend == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    if backend in ("torch-export", "torchscript"):
        module = (
            torch.export.load(str(artifact)).module()
            if backend == "torch-export"
            else torch.jit.load(str(artifact))
        )
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()
    if backend == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(artifact))
        interpreter.allocate_tensors()
        (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
        interpreter.set_tensor(source["index"], x.astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(target["index"])
    raise ValueError(f"no runtime here for {backend}")


def compare(actual, reference) -> dict[str, Any]:
    import numpy as np

    actual = np.asarray(actual, dtype=np.float64).reshape(reference.shape)
    reference = np.asarray(reference, dtype=np.float64)
    scale = float(np.abs(reference).max())
    error = float(np.abs(actual - reference).max())
    same_top1 = bool(actual.argmax(-1)[0] == reference.argmax(-1)[0])
    return {"own_abs": error, "own_rel": error / scale if scale else error, "own_top1": same_top1}


def torch_half_error(model, shape: tuple[int, int, int]) -> float | None:
    """PyTorch's own float16 error on CPU, relative to max|reference|, on the input timmx
    verifies with (seeded N(0, 1), seed 0): what float16 costs this model before Core ML."""
    import copy

    import numpy as np
    import torch

    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.inference_mode():
            reference = model(x).double().numpy()
            half = copy.deepcopy(model).half()(x.half()).double().numpy()
    except Exception:  # an op without a float16 kernel on CPU
        return None
    error = float(np.abs(half - reference).max())
    return error / float(np.abs(reference).max())


def input_shape(model, size: int) -> tuple[int, int, int]:
    """SIZE x SIZE where the model runs at it, else the model's default input size."""
    import timm
    import torch

    chans, *default = timm.data.resolve_data_config({}, model=model)["input_size"]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, chans, size, size))
        return chans, size, size
    except Exception:
        return chans, int(default[0]), int(default[1])


def randomize_norms(model) -> None:
    """As the tests do: every norm (and layer-scale) gets random, well-conditioned values."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests/
    from tests.conftest import randomize_norms as randomize

    randomize(model)


def write(results: Path, record: dict[str, Any]) -> None:
    with results.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _rel(message: str) -> float | None:
    found = re.search(r"max rel error ([0-9.eE+-]+)", message)
    return float(found.group(1)) if found else None


# The table.


def render(rows: dict[str, dict[str, Any]], backends: list[str], size: int, minutes: float) -> str:
    import timm
    import torch

    from timmx import __version__

    lines = [
        "# Sweep: timm families x backends, default options",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, timmx {__version__}, torch {torch.__version__}, "
        f"timm {timm.__version__}, {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} cores; {len(rows)} models in {minutes:.0f} min "
        "(`python benchmarks/sweep.py`).",
        "",
        "Random weights with re-randomised norm statistics, loaded with `--checkpoint`; input "
        f"3x{size}x{size} where the model runs at it, else its default. A cell: the status and the "
        "max abs error relative to max|reference| from this script's own run of the artifact "
        "against timm eager (before reparameterization), in: "
        + ", ".join(f"{b} {OWN_CHECK[b]}" for b in backends)
        + ". Core ML has no runtime on Linux: its number is timmx's report (the MIL reference "
        f"evaluator), at the default float16. `!` marks an own check over {FP32_BOUND:g} "
        "(float32 artifacts) or a top-1 disagreement.",
        "",
        "| model | input | max\\|ref\\| | " + " | ".join(backends) + " |",
        "|---|---|---|" + "---|" * len(backends),
    ]
    for model, row in rows.items():
        shape = "x".join(map(str, row.get("input", []))) or "-"
        scale = f"{row['scale']:.3g}" if "scale" in row else "-"
        cells = [cell_text(row["cells"].get(b, {}), b) for b in backends]
        lines.append(f"| {model} | {shape} | {scale} | " + " | ".join(cells) + " |")
    lines += ["", *tally(rows, backends), *failures(rows, backends), *half(rows)]
    return "\n".join(lines) + "\n"


def cell_text(cell: dict[str, Any], backend: str) -> str:
    status = cell.get("status", "-")
    if status != "pass":
        rel = cell.get("report_rel")
        return f"**{status}**" + (f" {rel:.2g}" if rel is not None else "")
    if backend == "coreml":
        return f"pass {cell['report_rel']:.2g}"
    if "own_rel" not in cell:
        return "pass (own check: error)"
    flag = "" if cell["own_rel"] <= FP32_BOUND and cell["own_top1"] else " !"
    return f"pass {cell['own_rel']:.2g}{flag}"


def tally(rows: dict[str, dict[str, Any]], backends: list[str]) -> list[str]:
    kinds = ("pass", "not verified", "verify-fail", "export-fail", "refused", "crash")
    lines = ["| backend | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for backend in backends:
        statuses = [row["cells"].get(backend, {}).get("status") for row in rows.values()]
        statuses = ["not verified" if s in ("skipped", "partial") else s for s in statuses]
        counts = [statuses.count(kind) for kind in kinds]
        lines.append(f"| {backend} | " + " | ".join(map(str, counts)) + " |")
    return [*lines, ""]


def failures(rows: dict[str, dict[str, Any]], backends: list[str]) -> list[str]:
    lines = []
    for model, row in rows.items():
        for backend in backends:
            cell = row["cells"].get(backend, {})
            if cell.get("status") != "pass":
                lines.append(
                    f"- {model} / {backend}: {cell.get('status')}: `{cell.get('message')}`"
                )
            elif cell.get("own_error"):
                lines.append(f"- {model} / {backend}: own check failed: `{cell['own_error']}`")
    return ["## Not passed", "", *(lines or ["none"]), ""]


def half(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Core ML's float16 error per model, beside PyTorch's own float16 error on the same input."""
    found = []
    for model, row in rows.items():
        cell = row["cells"].get("coreml", {})
        if cell.get("report_rel") is not None:
            found.append((model, cell["report_rel"], row.get("torch_fp16_rel")))
        elif "not finite" in str(cell.get("message")):
            found.append((model, float("inf"), row.get("torch_fp16_rel")))
    if not found:
        return []
    found.sort(key=lambda item: item[1])
    finite = [value for _, value, _ in found if value != float("inf")]
    over = [model for model, value, _ in found if value > FP16_BOUND]
    lines = [
        "## Core ML float16: max abs error / max|reference|",
        "",
        "Core ML: timmx's report (its MIL reference evaluator stores every op's result as "
        "float16). PyTorch: the same model in float16 on CPU, on the same input "
        "(timmx's seeded N(0, 1)), for comparison; inf: float16 overflowed.",
        "",
        f"{len(finite)} finite: min {min(finite, default=0):.2%}, median "
        f"{statistics.median(finite) if finite else 0:.2%}, max {max(finite, default=0):.2%}; "
        f"over the {FP16_BOUND:.0%} bound: {', '.join(over) or 'none'}.",
        "",
        "| model | Core ML float16 | PyTorch float16 |",
        "|---|---|---|",
    ]
    for model, value, torch_value in found:
        torch_text = "-" if torch_value is None else _percent(torch_value)
        lines.append(f"| {model} | {_percent(value)} | {torch_text} |")
    return [*lines, ""]


def _percent(value: float) -> str:
    return "inf" if value == float("inf") or value != value else f"{value:.2%}"


if __name__ == "__main__":
    main()
