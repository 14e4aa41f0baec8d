"""The zoo: timm's families (benchmarks/sweep.py's) x the formats that run in their own images.

    python benchmarks/zoo.py [--models a,b] [--backends saved-model,tfjs] [--size 128]
                             [--jobs 1] [--out benchmarks/results/zoo.md] [--resume]

One `timmx build` (the library's run_build, as the CLI runs it): every model's checkpoint (random
weights with re-randomised norm statistics, as the sweep's) x every backend, each job isolated
in its toolchain's image (built first when missing), on warm containers. Each cell is the job's
outcome: pass (verified in the backend's runtime in its image, with the max abs error relative
to the output's scale from the report), refused (timmx's one-line refusal, which names the
backends that work instead), export-fail (the converter failed), verify-fail (the artifact's
outputs are off) or crash (anything else). Defaults per backend, except rknn's required
`--target-platform` (rk3588, fp16, the toolkit's simulator on x86).

The table is rewritten after every job, and its cells kept beside it (zoo.json): a zoo cut off
goes on with `--resume`, which runs only the models with a backend still missing (delete cells
from zoo.json to run them again; `--backends` then names the columns to run, the rest are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep import MODELS, input_shape, randomize_norms

BACKENDS = ("saved-model", "tfjs", "mnn", "rknn")
TARGET_FLAGS: dict[str, dict[str, Any]] = {"rknn": {"target-platform": "rk3588"}}
KINDS = ("pass", "refused", "export-fail", "verify-fail", "crash")
JOB_TIMEOUT_S = 900  # a job past it fails (a crash cell), and the zoo goes on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated")
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at once")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo.md"))
    parser.add_argument("--resume", action="store_true", help="keep the cells of an earlier run")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    backends = [b for b in args.backends.split(",") if b]
    kept = args.out.with_suffix(".json")
    cells, minutes = load_cells(kept) if args.resume else ({}, 0.0)
    todo = [m for m in models if any((m, b) not in cells for b in backends)]
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="timmx-zoo-") as scratch:
        root = Path(scratch)
        shapes = {model: make_checkpoint(model, args.size, root) for model in models}

        def write() -> None:
            took = minutes + (time.perf_counter() - started) / 60
            save_cells(kept, cells, took)
            # a resumed run of some backends keeps the others' columns
            shown = [b for b in BACKENDS if b in backends or any(k[1] == b for k in cells)]
            args.out.write_text(render(shapes, shown, cells, args.size, took))

        if todo:
            todo_shapes = {model: shapes[model] for model in todo}
            (root / "timmx.toml").write_text(build_file(todo_shapes, backends))
            run(root / "timmx.toml", args.jobs, cells, write)
        write()
    print(f"wrote {args.out}")


def load_cells(path: Path) -> tuple[dict[tuple[str, str], dict[str, Any]], float]:
    if not path.is_file():
        return {}, 0.0
    kept = json.loads(path.read_text())
    cells = {(c.pop("model"), c.pop("backend")): c for c in kept["cells"]}
    return cells, kept["minutes"]


def save_cells(path: Path, cells: dict[tuple[str, str], dict[str, Any]], minutes: float) -> None:
    rows = [{"model": m, "backend": b, **cell} for (m, b), cell in cells.items()]
    path.write_text(json.dumps({"minutes": minutes, "cells": rows}, indent=1) + "\n")


def make_checkpoint(model: str, size: int, root: Path) -> tuple[int, int, int]:
    import timm
    import torch

    torch.manual_seed(7)
    net = timm.create_model(model, pretrained=False)
    randomize_norms(net)
    net.eval()
    torch.save(net.state_dict(), root / f"{model}.pth")
    return input_shape(net, size)


def build_file(shapes: dict[str, tuple[int, int, int]], backends: list[str]) -> str:
    lines = ['[build]\noutput = "dist"\n', f"[defaults]\ntimeout = {JOB_TIMEOUT_S}\n"]
    for model, shape in shapes.items():
        lines += [
            "[[models]]",
            f'name = "{model}"',
            f'checkpoint = "{model}.pth"',
            f"input-size = {list(shape)}",
            "",
        ]
    for backend in backends:
        lines += ["[[targets]]", f'backend = "{backend}"', "isolated = true"]
        lines += [f'{k} = "{v}"' for k, v in TARGET_FLAGS.get(backend, {}).items()]
        lines.append("")
    tomllib.loads("\n".join(lines))  # written by hand: checked before timmx reads it
    return "\n".join(lines)


def run(path: Path, jobs: int, cells: dict[tuple[str, str], dict[str, Any]], write) -> None:
    """Run the build file's jobs, filling `cells` and calling `write` after each."""
    from timmx.build.run import load_build, run_build
    from timmx.errors import ExportFailedError, TimmxError, VerificationError

    build = load_build(path)

    def done(outcome) -> None:
        planned = outcome.planned
        cell: dict[str, Any] = {"seconds": outcome.seconds}
        error = outcome.error
        if error is None:
            verification = outcome.result.verification
            passed = verification is not None and verification.status == "passed"
            cell.update(
                status="pass" if passed else "crash", rel=verification.worst("max_rel_error")
            )
            cell["message"] = None if passed else f"verification {verification.status}"
        elif isinstance(error, VerificationError):
            cell.update(status="verify-fail", message=error.message)
        elif isinstance(error, ExportFailedError):
            cell.update(status="export-fail", message=error.message)
        elif type(error) is not TimmxError and isinstance(error, TimmxError):
            cell.update(status="refused", message=error.message)
        else:
            cell.update(status="crash", message=error.message)
        model = planned.job.model.name
        cells[(model, planned.job.backend)] = cell
        print(f"{model} / {planned.job.backend}: {cell['status']} ({outcome.seconds:.0f} s)")
        write()

    run_build(build, jobs, True, lambda planned: None, lambda planned, message: None, done)


def render(shapes, backends, cells, size: int, minutes: float) -> str:
    import timm
    import torch

    from timmx import __version__

    lines = [
        "# Zoo: timm families x the formats in their own images",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, timmx {__version__}, host torch {torch.__version__}, "
        f"timm {timm.__version__}, {platform.machine()} {platform.system()}, "
        f"{os.cpu_count()} cores; {len(shapes)} models x {len(backends)} backends in "
        f"{minutes:.0f} min (`python benchmarks/zoo.py`).",
        "",
        "Every job isolated, in its toolchain's image, through `timmx build`; defaults per "
        "backend (rknn: `--target-platform rk3588`, fp16, verified in the toolkit's simulator). "
        f"Input 3x{size}x{size} where the model runs at it, else its default. A cell: the status "
        "and the max abs error relative to max|reference| from timmx's verification in the "
        "backend's runtime.",
        "",
        "| model | input | " + " | ".join(backends) + " |",
        "|---|---|" + "---|" * len(backends),
    ]
    for model, shape in shapes.items():
        row = [cell_text(cells.get((model, b), {})) for b in backends]
        lines.append(f"| {model} | {'x'.join(map(str, shape))} | " + " | ".join(row) + " |")
    lines += ["", "| backend | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for backend in backends:
        statuses = [cells.get((m, backend), {}).get("status") for m in shapes]
        lines.append(f"| {backend} | " + " | ".join(str(statuses.count(k)) for k in KINDS) + " |")
    lines += ["", "## Not passed", ""]
    failed = [
        f"- {model} / {backend}: {cell['status']}: `{cell.get('message')}`"
        for (model, backend), cell in cells.items()
        if cell["status"] != "pass"
    ]
    return "\n".join([*lines, *(failed or ["none"]), ""])


def cell_text(cell: dict[str, Any]) -> str:
    status = cell.get("status", "-")
    if status == "pass":
        rel = cell.get("rel")
        return "pass" + (f" {rel:.2g}" if rel is not None else "")
    return f"**{status}**"


if __name__ == "__main__":
    main()
