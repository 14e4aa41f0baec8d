"""Every registered backend, in every mode it declares, exported from one small checkpoint and
run by this test in the backend's own runtime (in-process where its extra is installed,
ExecuTorch in its image), against a fresh timm model built from the same weights.

Parametrized over `all_backends()`, as timm's tests run every registered model: a backend added
to the registry gets a case at once, and that case fails until RUNNERS says how to run its
artifact; a `mode`-like option value with no case fails `test_every_declared_mode_has_a_case`.
Bounds go by precision: fp32 tight, fp16 looser, int8 a relative bound and a top-1 agreement,
4-bit weights a loose bound; the quantized modes must also differ from fp32 (quantized for real).

Each export's report must list its files as they are (sizes and sha256 recomputed here).
A folder artifact through `timmx build`, its manifest and `--check` (an altered file, a missing
one) is tests/test_build_gate.py's (ncnn); Ray's file shipping is tests/test_build_ray.py's.
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import reference_model, require
from tests.isolated.conftest import docker_client  # noqa: F401 - for the ExecuTorch cases
from tests.report_files import assert_report_lists_the_files
from tests.test_calibration import write_images
from timmx.backends import all_backends, get_backend

MODEL, CLASSES = "test_resnet", 10
H, W = 32, 64  # non-square: a swap of height and width cannot pass
SAMPLES = 12


@dataclass(frozen=True)
class Case:
    flags: tuple[str, ...] = ()
    precision: str = "fp32"  # a key of BOUNDS
    calibration: str | None = None  # "tensor" or "images": --calibration-data
    isolated: bool = False  # exported with --isolated (its runtime is not importable here)


@dataclass(frozen=True)
class Bound:
    rel: float  # max abs error over the reference's max |value|
    top1: float | None = None  # least fraction of samples with the reference's top-1 class
    quantized: bool = False  # must differ from the float model: the weights really changed


BOUNDS = {
    "fp32": Bound(1e-4),
    "fp16": Bound(2e-2, top1=0.9),
    "int8": Bound(0.15, top1=0.75, quantized=True),
    "int4": Bound(0.5, quantized=True),
}

# Per backend: a case per mode it declares (id -> case). A backend missing here gets one case
# with its defaults, which must pass as fp32.
CASES: dict[str, dict[str, Case]] = {
    "onnx": {
        "fp32": Case(),
        "fp16": Case(("--mode", "fp16"), "fp16"),
        "dynamic-int8": Case(("--mode", "dynamic-int8"), "int8"),
        "int8": Case(("--mode", "int8"), "int8", "tensor"),
    },
    "litert": {
        "fp32": Case(("--mode", "fp32")),
        "fp16": Case(("--mode", "fp16"), "fp16"),
        "dynamic-int8": Case(("--mode", "dynamic-int8"), "int8"),
        "int8": Case(("--mode", "int8"), "int8", "tensor"),
    },
    "openvino": {
        "fp32": Case(("--mode", "fp32")),
        "fp16": Case(("--mode", "fp16"), "fp16"),
        "int8-tensor": Case(("--mode", "int8"), "int8", "tensor"),
        "int8-images": Case(("--mode", "int8"), "int8", "images"),
    },
    "coreml": {
        "float32": Case(("--compute-precision", "float32")),
        "float16": Case(("--compute-precision", "float16"), "fp16"),
        "int8": Case(("--int8", "--compute-precision", "float32"), "int8"),
        "int4": Case(("--int4",), "int4"),
        "int4-linear": Case(("--int4-linear",), "int4"),
        "palettize6": Case(("--palettize", "6"), "int4"),
    },
    "ncnn": {
        "fp32": Case(("--no-fp16",)),
        "fp16": Case(("--fp16",), "fp16"),
    },
    "mnn": {
        "fp32": Case(),
        "fp16": Case(("--mode", "fp16"), "fp16"),
        "int8": Case(("--mode", "int8"), "int8"),
    },
    "executorch": {
        "xnnpack-fp32": Case(("--delegate", "xnnpack", "--mode", "fp32"), isolated=True),
        "portable-fp32": Case(("--delegate", "portable"), isolated=True),
        "dynamic-int8": Case(("--mode", "dynamic-int8"), "int8", isolated=True),
        "int8": Case(("--mode", "int8"), "int8", "tensor", isolated=True),
    },
    "rknn": {
        "fp16": Case(("--target-platform", "rk3588", "--mode", "fp16"), "fp16", isolated=True),
    },
    "saved-model": {
        "fp32": Case(),
        "nhwc-input": Case(("--nhwc-input",)),
    },
    "tfjs": {
        # uint8 weights (affine per tensor), expanded to float32 at load: int8-like
        "uint8": Case(("--quantize", "uint8"), "int8", isolated=True),
        "nhwc-input": Case(("--nhwc-input",), isolated=True),  # and float32 weights
    },
    "torchscript": {
        "trace": Case(("--method", "trace")),
        "script": Case(("--method", "script")),
    },
}

# Declared option values with no case here, each with why and where they are covered instead.
NOT_RUN = {
    ("coreml", "convert_to", "neuralnetwork"): "a .mlmodel has no runtime off Apple; its "
    "weights are read back by test_export_coreml.py::test_neuralnetwork",
    ("executorch", "delegate", "coreml"): "runs only on Apple; refused or unverified elsewhere",
    ("executorch", "compute_precision", "float16"): "only with --delegate coreml (Apple only)",
    ("executorch", "compute_precision", "float32"): "only with --delegate coreml (Apple only)",
    ("executorch", "delegate", "mlx"): "runs only on macOS; its refusal is in test_readme_command",
    # Each run in its image takes a minute or more on 2 cores; the backend's own test runs it:
    ("rknn", "mode", "int8"): "test_isolated_rknn.py calibrates it on images and checks held-out "
    "samples, top-1 included",
    ("tfjs", "quantize", "float16"): "test_isolated_tfjs.py runs it in Node.js against timm and "
    "checks that the shards halve",
}
# Options whose values are modes or precisions: each value needs a case (or a NOT_RUN entry).
MODE_FIELDS = ("mode", "delegate", "compute_precision", "convert_to", "method", "quantize")


def _one_by_one(run: Callable[[Path, np.ndarray], np.ndarray]) -> Callable:
    """A runner for artifacts exported at batch 1: each sample alone."""
    return lambda artifact, x, case: np.concatenate([run(artifact, s[None]) for s in x])


def _onnx(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("onnxruntime")
    from tests.test_export_onnx_modes import run_onnx

    return run_onnx(artifact, x)[0]


def _litert(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("ai_edge_litert")
    from tests.test_export_litert import run_tflite

    return run_tflite(artifact, x, nhwc="--nhwc-input" in case.flags)


def _openvino(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("openvino")
    from tests.test_export_openvino import run_ir

    return run_ir(artifact, x)


def _coreml(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("coremltools")
    from tests.test_export_coreml import run_program

    return np.concatenate([run_program(artifact, s[None])["output"] for s in x])


def _ncnn(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("ncnn")
    from tests.test_export_ncnn import run_ncnn

    fp16 = "--fp16" in case.flags
    return np.concatenate([run_ncnn(artifact, s[None], fp16) for s in x])


def _mnn(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("MNN")
    from tests.test_export_mnn import run_mnn

    return np.concatenate([run_mnn(artifact, s[None]) for s in x])


def _saved_model(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("tensorflow")
    from tests.test_export_saved_model import run_saved_model

    return run_saved_model(artifact, x, nhwc="--nhwc-input" in case.flags)


def _coreai(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    require("coreai.runtime")
    from tests.test_export_coreai import run_asset

    return np.concatenate([run_asset(artifact, s[None]) for s in x])


def _executorch(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    from tests.isolated.in_image import run_pte

    outputs = run_pte(artifact, {f"x{i}": s[None] for i, s in enumerate(x)})
    return np.concatenate([outputs[f"x{i}"] for i in range(len(x))])


def _tfjs(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    from tests.isolated.test_isolated_tfjs import run_tfjs

    return run_tfjs(artifact, x, nhwc="--nhwc-input" in case.flags)


def _rknn(artifact: Path, x: np.ndarray, case: Case) -> np.ndarray:
    # rknn-toolkit2 simulates no saved .rknn: the same job exported again in the image, its
    # build run there (and the artifact read back)
    from tests.isolated.test_isolated_rknn import run_rknn_job

    outputs = run_rknn_job(artifact, {f"x{i}": s[None] for i, s in enumerate(x)})
    return np.concatenate([outputs[f"x{i}"] for i in range(len(x))])


def _torch_export(artifact: Path, x: np.ndarray) -> np.ndarray:
    return torch.export.load(str(artifact)).module()(torch.from_numpy(x)).detach().numpy()


def _torchscript(artifact: Path, x: np.ndarray) -> np.ndarray:
    return torch.jit.load(str(artifact))(torch.from_numpy(x)).detach().numpy()


# backend name -> runner(artifact, inputs (N, C, H, W) float32, case) -> outputs (N, classes)
RUNNERS: dict[str, Callable[[Path, np.ndarray, Case], np.ndarray]] = {
    "onnx": _onnx,
    "litert": _litert,
    "openvino": _openvino,
    "coreml": _coreml,
    "ncnn": _ncnn,
    "mnn": _mnn,
    "saved-model": _saved_model,
    "coreai": _coreai,
    "executorch": _executorch,
    "rknn": _rknn,
    "tfjs": _tfjs,
    "torch-export": _one_by_one(_torch_export),
    "torchscript": _one_by_one(_torchscript),
}


def _params() -> list:
    params = []
    for backend in all_backends():
        for mode, case in CASES.get(backend.name, {"default": Case()}).items():
            # an isolated-only backend's image is built last (tests/prebuild.py): named here
            named = (backend.toolchain,) if backend.isolated_only else ()
            marks = [pytest.mark.isolated(*named)] if case.isolated else []
            params.append(
                pytest.param(backend.name, case, id=f"{backend.name}-{mode}", marks=marks)
            )
    return params


def inputs(case: Case) -> torch.Tensor:
    """Samples like the calibration data: normal noise, or random pixels as the image loader
    gives them (scaled and normalised with the model's mean and std)."""
    generator = torch.Generator().manual_seed(29)
    if case.calibration != "images":
        return torch.randn(SAMPLES, 3, H, W, generator=generator)
    from timm.models import get_pretrained_cfg_value

    pixels = torch.rand(SAMPLES, 3, H, W, generator=generator)
    mean, std = (
        torch.tensor(get_pretrained_cfg_value(MODEL, key)).view(1, 3, 1, 1)
        for key in ("mean", "std")
    )
    return (pixels - mean) / std


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("conformance-calibration")
    generator = torch.Generator().manual_seed(11)
    torch.save(torch.randn(32, 3, H, W, generator=generator), folder / "calib.pt")
    return {"tensor": folder / "calib.pt", "images": write_images(folder / "images", 16)}


@pytest.mark.parametrize(("backend", "case"), _params())
def test_backend_matches_timm(cli, workdir, make_checkpoint, calibration, request, backend, case):
    runner = RUNNERS.get(backend)
    if runner is None:
        pytest.fail(f"backend '{backend}' has no runtime runner: add one to RUNNERS in {__name__}")
    if case.isolated:
        request.getfixturevalue("docker_client")  # no engine: skipped, or failed in CI
    ckpt = make_checkpoint(MODEL, num_classes=CLASSES)
    flags = list(case.flags)
    if case.calibration:
        flags += ["--calibration-data", calibration[case.calibration]]
    if case.isolated:
        flags.append("--isolated")
    artifact = workdir / "out" / f"m{get_backend(backend).suffix}"
    result = cli(
        "export", backend, MODEL, "-c", ckpt, "--num-classes", CLASSES,
        "--input-size", 3, H, W, *flags, "-o", artifact,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = assert_report_lists_the_files(artifact)  # sizes and sha256 recomputed here
    if artifact.is_dir():
        assert len(report["artifacts"]) >= 2  # every member, not the folder
    x = inputs(case)
    with torch.no_grad():
        expected = reference_model(MODEL, ckpt, num_classes=CLASSES)(x).numpy()

    actual = np.asarray(runner(artifact, x.numpy(), case), dtype=np.float32)

    assert_within(actual, expected, BOUNDS[case.precision])


def assert_within(actual: np.ndarray, expected: np.ndarray, bound: Bound) -> None:
    assert actual.shape == expected.shape
    rel = float(np.abs(actual - expected).max() / np.abs(expected).max())
    assert rel <= bound.rel, f"max abs error {rel:.3g} of the output's scale, over {bound.rel}"
    if bound.top1 is not None:
        top1 = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
        assert top1 >= bound.top1, f"top-1 agrees on {top1:.0%} only"
    if bound.quantized:
        assert rel > 1e-4, "no larger error than float32: were the weights quantized at all?"


def _values(annotation) -> list[str]:
    """The values of a Literal (or Literal | None) field; [] for any other type."""
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _values(arg)]


@pytest.mark.parametrize("backend", [b.name for b in all_backends()])
def test_every_declared_mode_has_a_case(backend):
    """A value of a mode-like option (--mode, --delegate, --compute-precision, --convert-to,
    --method) with no conformance case, or a backend with no runner, fails here."""
    assert backend in RUNNERS, f"backend '{backend}' has no runtime runner in RUNNERS"
    options = get_backend(backend).Options
    cases = CASES.get(backend, {"default": Case()}).values()
    missing = []
    for field_name, field in options.model_fields.items():
        if field_name not in MODE_FIELDS:
            continue
        flag = "--" + field_name.replace("_", "-")
        for value in _values(field.annotation):
            covered = any(
                (flag, value) in zip(case.flags, case.flags[1:], strict=False)
                or (value == field.default and flag not in case.flags)
                for case in cases
            )
            if not covered and (backend, field_name, value) not in NOT_RUN:
                missing.append(f"{flag} {value}")
    assert not missing, f"{backend}: no conformance case for {', '.join(missing)}"
