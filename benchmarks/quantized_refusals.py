"""Which fix works when static int8 ONNX fails verification: each suggestion, run, on each family.

    python benchmarks/quantized_refusals.py [--models mobilenetv3_large_100 ...] [--size 224]
                                            [--samples 96] [--out benchmarks/results/...md]

For each model, one at a time (random weights, re-randomised norm statistics, saved as a local
checkpoint, and a seeded calibration tensor file of 4 x SAMPLES images, as
benchmarks/quantized.py makes them):
`timmx.export` of static int8 ONNX on SAMPLES calibration samples (the refusal), then every
alternative the refusal names: the same on 3x the samples, ONNX dynamic-int8, ONNX fp16,
OpenVINO int8 on SAMPLES, OpenVINO's default (fp16 weights). A cell is timmx's own verdict
(passed / failed, with the max abs error and top-1 agreement it measured): what a user gets.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quantized import ROOT, openvino_missing, prepare

MODELS = ("mobilenetv3_large_100", "mobilenetv4_conv_small", "fastvit_t8")


def variants(samples: int) -> list[tuple[str, str, dict]]:
    """(column, backend, options) for the refusal and each alternative it suggests."""
    calibrated = {"calibration_data": "calibration.pt"}
    return [
        (f"onnx int8 ({samples})", "onnx", {"mode": "int8", **calibrated}),
        (f"onnx int8 ({3 * samples})", "onnx", {"mode": "int8", **calibrated, "more": True}),
        ("onnx dynamic-int8", "onnx", {"mode": "dynamic-int8"}),
        ("onnx fp16", "onnx", {"mode": "fp16"}),
        (f"openvino int8 ({samples})", "openvino", {"mode": "int8", **calibrated}),
        ("openvino default", "openvino", {}),
    ]


def verdict(backend: str, model: str, options: dict) -> str:
    import timmx
    from timmx.errors import TimmxError, VerificationError

    try:
        result = timmx.export(backend, model, **options)
    except VerificationError as exc:
        found = re.search(r"max abs error (\S+),.*top-1 agreement (\d+%)", exc.message)
        return f"fails ({found[1]}, top-1 {found[2]})" if found else "fails"
    except TimmxError as exc:
        return f"error: {exc.message[:60]}"
    checks = result.verification.checks
    worst = max((c.max_abs_error for c in checks), default=0.0)
    top1 = min((c.top1_agreement for c in checks), default=1.0)
    return f"passes ({worst:.3g}, top-1 {top1:.0%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--samples", type=int, default=96, help="calibration samples")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/quantized_refusals.md"
    )
    args = parser.parse_args()
    missing = openvino_missing()
    columns = variants(args.samples)
    rows: list[list[str]] = []
    started = time.perf_counter()
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="timmx-refusals-") as scratch:
            work = Path(scratch)
            os.chdir(work)  # timmx resolves paths against the current folder
            _, checkpoint, _ = prepare(name, args.size, 2 * args.samples, work)
            row = [name]
            for label, backend, options in columns:
                if backend == "openvino" and missing:
                    row.append("n/a")
                    continue
                options = {
                    "checkpoint": str(checkpoint),
                    "input_size": (3, args.size, args.size),
                    "output": f"out-{len(row)}{'.onnx' if backend == 'onnx' else '.xml'}",
                    **options,
                }
                if "calibration_data" in options:
                    options["calibration_samples"] = args.samples * (
                        3 if options.pop("more", False) else 1
                    )
                tick = time.perf_counter()
                row.append(verdict(backend, name, options))
                print(f"{name} {label}: {row[-1]} ({time.perf_counter() - tick:.0f} s)", flush=True)
            rows.append(row)
    header = ["model", *(label for label, _, _ in columns)]
    lines = [
        f"# Static int8 ONNX refusals and what works instead ({args.size}x{args.size})",
        "",
        f"Random weights with re-randomised norms; calibration on {args.samples} seeded "
        f"normalised images (verified on held-out ones); {(time.perf_counter() - started) / 60:.0f}"
        " min. Cells: timmx's verdict (max abs error, top-1 agreement with PyTorch).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    if missing:
        lines += ["", f"OpenVINO columns n/a: {missing}."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
