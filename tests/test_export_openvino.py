"""OpenVINO IR exports of real timm models, checked in OpenVINO's CPU plugin against PyTorch.

Each comparison here is independent of timmx's own verification: this file compiles the IR
with openvino itself at INFERENCE_PRECISION_HINT f32 and runs it against the checkpoint loaded
into a fresh timm model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import reference_model, require
from tests.test_errors import assert_refused
from timmx.backends import get_backend

require("openvino")

SIZE = 32


def core():
    """openvino's Core, openvino imported as timmx imports it (its telemetry off)."""
    from timmx.backends._openvino.convert import import_openvino

    return import_openvino().Core()


def run_ir(path: Path, x: np.ndarray) -> np.ndarray:
    """The IR's output at INFERENCE_PRECISION_HINT f32, in chunks of its batch size."""
    compiled = core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    first = compiled.inputs[0].get_partial_shape()[0]
    batch = first.get_length() if first.is_static else len(x)
    x = x.astype(np.float32)
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)]
    return np.concatenate([np.array(compiled(chunk)[0]) for chunk in chunks])


def ir_facts(path: Path) -> tuple[dict, dict, list[int]]:
    """Op counts, constant counts by element type, and the input's shape (-1: dynamic)."""
    from collections import Counter

    model = core().read_model(str(path))
    ops = Counter(op.get_type_name() for op in model.get_ops())
    constants = Counter(
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
    )
    shape = [d.get_length() if d.is_static else -1 for d in model.inputs[0].get_partial_shape()]
    return ops, constants, shape


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float, float]:
    """Max abs error, that error over the output's scale, top-1 agreement."""
    error = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    top1 = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    return error, error / scale, top1


def export(cli, workdir: Path, model: str, ckpt: Path, out: str, *flags, size=(SIZE, SIZE)):
    result = cli(
        "export", "openvino", model, "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, *size, "-o", out, "--json", *flags,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / out)
    assert json.loads(result.out) == report  # converters and NNCF print nothing on stdout
    assert report["status"] == "success"
    assert report["verification"]["status"] == "passed"
    return report


def inputs(count: int = 8, size=(SIZE, SIZE), seed: int = 5) -> torch.Tensor:
    return torch.randn(count, 3, *size, generator=torch.Generator().manual_seed(seed))


def check_hints(details: dict, note: str) -> None:
    """The report names the hints checked; the platform's default is judged too."""
    default = core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert details["precision_hints"] == {"verified": "f32", "platform_default": default}
    checked = details["default_hint_check"]
    assert checked["hint"] == default
    if default == "f32":
        assert checked["status"] == "same as verified" and "also this CPU's default" in note
    elif checked["status"] == "passed":
        assert f"this CPU's default, {default}, matches PyTorch too" in note
    else:
        assert "matches PyTorch only at INFERENCE_PRECISION_HINT f32" in note
        assert '"INFERENCE_PRECISION_HINT": "f32"' in note


# (flags, mode, max error over the output's scale, the weights' element type)
MODES = {
    "upstream-no-fp16": (["--no-fp16"], "fp32", 1e-5, "f32"),
    "default-fp16": ([], "fp16", 5e-3, "f16"),
}


@pytest.mark.parametrize("case", list(MODES))
def test_modes_match_pytorch(cli, workdir, make_checkpoint, case):
    flags, mode, limit, weights = MODES[case]
    ckpt = make_checkpoint("resnet18", num_classes=10)
    report = export(cli, workdir, "resnet18", ckpt, "out/m.xml", *flags)
    assert {"openvino", "nncf"} <= set(report["environment"]["packages"])
    assert sorted(a["path"] for a in report["artifacts"]) == ["m.bin", "m.xml"]
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["m.bin", "m.xml", "m.xml.json"]
    verification = report["verification"]
    details = verification["details"]
    assert details["mode"] == mode and "fake_quantize" not in details
    assert details["inputs"] == [{"name": "input", "shape": [1, 3, SIZE, SIZE], "dtype": "f32"}]
    assert details["outputs"] == [{"name": "output", "shape": [1, 10], "dtype": "f32"}]
    assert verification["runtime"] == "OpenVINO CPU (INFERENCE_PRECISION_HINT f32)"
    assert verification["checks"][0]["max_rel_error"] <= limit
    check_hints(details, verification["note"])

    # The IR itself: weights stored as the mode says, in a .bin of that size.
    artifact = workdir / "out/m.xml"
    ops, constants, shape = ir_facts(artifact)
    assert shape == [1, 3, SIZE, SIZE] and "FakeQuantize" not in ops
    assert constants[weights] >= 20 and constants == details["constant_types"]
    other = "f16" if weights == "f32" else "f32"
    assert not constants.get(other)
    params = sum(p.numel() for p in reference_model("resnet18", ckpt, num_classes=10).parameters())
    per_weight = {"f32": 4, "f16": 2}[weights]
    assert 0.95 <= (workdir / "out/m.bin").stat().st_size / (params * per_weight) <= 1.05

    x = inputs()
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert np.abs(expected).max() > 0.5  # the weights are not trivial
    error, relative, top1 = compare(run_ir(artifact, x.numpy()), expected)
    assert relative <= limit and top1 == 1.0, (error, relative)


def test_int8_random_calibration_is_held_out_and_deterministic(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    flags = ("--mode", "int8", "--random-calibration", "--calibration-steps", 8)
    report = export(cli, workdir, "resnet18", ckpt, "q.xml", *flags)
    assert any("not for production" in w for w in report["warnings"])
    verification = report["verification"]
    assert verification["inputs"].startswith("fresh random draws like the calibration's")
    assert verification["min_top1"] == 0.8  # enough held-out samples for top-1 to count
    details = verification["details"]
    assert details["mode"] == "int8" and details["nncf_model_type"] == "default"
    assert details["fake_quantize"] >= 20 and details["fake_convert"] == 0
    assert details["constant_types"]["i8"] >= 20  # int8 weights, not float ones
    check_hints(details, verification["note"])

    ops, constants, _ = ir_facts(workdir / "q.xml")
    assert ops["FakeQuantize"] == details["fake_quantize"] and constants["i8"] >= 20

    x = inputs()
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    actual = run_ir(workdir / "q.xml", x.numpy())
    error, relative, top1 = compare(actual, expected)
    assert relative <= 0.1 and top1 >= 0.75, (error, relative, top1)

    # The int8 tolerance still catches a broken graph: a sign flip in the logits.
    from timmx.backends.openvino import TOLERANCES
    from timmx.verification import compare as verify_compare

    assert not verify_compare(expected, -actual, TOLERANCES["int8"], 8).passed

    # The same job gives the same bytes: calibration, NNCF and the saved IR are deterministic.
    export(cli, workdir, "resnet18", ckpt, "again.xml", *flags)
    for suffix in (".xml", ".bin"):
        again = (workdir / f"again{suffix}").read_bytes()
        assert again == (workdir / f"q{suffix}").read_bytes(), suffix


def test_dynamic_batch_non_square(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("mobilenetv3_small_100", num_classes=10)
    report = export(
        cli, workdir, "mobilenetv3_small_100", ckpt, "d.xml",
        "--dynamic-batch", "--batch-size", 2, size=(48, 32),
    )  # fmt: skip
    verification = report["verification"]
    assert [c["batch_size"] for c in verification["checks"]] == [2, 1]
    assert verification["details"]["inputs"][0]["shape"] == [-1, 3, 48, 32]
    assert verification["details"]["outputs"][0]["shape"] == [-1, 10]
    assert ir_facts(workdir / "d.xml")[2] == [-1, 3, 48, 32]

    x = inputs(5, size=(48, 32))  # a batch size verification did not use
    model = reference_model("mobilenetv3_small_100", ckpt, num_classes=10)
    expected = model(x).detach().numpy()
    actual = run_ir(workdir / "d.xml", x.numpy())
    assert actual.shape == (5, 10)
    error, relative, top1 = compare(actual, expected)
    assert relative <= 5e-3 and top1 == 1.0, (error, relative)


@pytest.mark.parametrize(
    ("default", "broken", "expected"),
    [
        ("f32", False, "also this CPU's default"),
        ("bf16", False, "this CPU's default, bf16, matches PyTorch too"),
        ("bf16", True, "matches PyTorch only at INFERENCE_PRECISION_HINT f32"),
    ],
)
def test_default_precision_hint_is_judged_too(
    cli, workdir, make_checkpoint, monkeypatch, default, broken, expected
):
    """Whatever this CPU's default is: the platform default is faked, and (broken) the IR run
    at it made wrong, to see each outcome reported; f32 verification decides either way."""
    from timmx.backends._openvino import runtime

    real = runtime.cpu_runtime

    def at_hint(artifact, hint="f32"):
        run = real(artifact, "f32")
        if hint is None and broken:
            return lambda x: -run(x)
        return run

    monkeypatch.setattr(runtime, "default_hint", lambda: default)
    monkeypatch.setattr(runtime, "cpu_runtime", at_hint)
    ckpt = make_checkpoint("resnet18", num_classes=10)
    report = export(cli, workdir, "resnet18", ckpt, "h.xml", "--mode", "fp32")
    verification = report["verification"]
    assert expected in verification["note"]
    checked = verification["details"]["default_hint_check"]
    assert checked["hint"] == default
    assert verification["details"]["precision_hints"]["platform_default"] == default
    if broken:
        assert checked["status"] == "failed" and checked["top1_agreement"] < 0.5
        load = 'core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})'
        assert load in verification["note"]
        assert report["warnings"] == [verification["note"]]
    else:
        assert checked["status"] == ("same as verified" if default == "f32" else "passed")
        assert report["warnings"] == []


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (("--mode", "fp16", "--random-calibration"), ("--random-calibration", "--mode int8")),
        (("--random-calibration",), ("--random-calibration", "--mode fp16")),
        (("--mode", "int8"), ("--mode int8 needs calibration",)),
        (("--no-fp16", "--mode", "int8", "--random-calibration"), ("--no-fp16", "--mode fp32")),
        (("--fp16", "--mode", "fp32"), ("--fp16", "contradicts --mode fp32")),
        (("-o", "m.onnx"), ("must end with .xml",)),
        (("--mean", "0.5,0.5,0.5"), ("--mode fp16 calibrates nothing",)),
    ],
)
def test_refusals_are_one_line_and_leave_nothing(cli, workdir, flags, needles):
    result = cli("export", "openvino", "resnet18", "--input-size", 3, SIZE, SIZE, *flags)
    assert_refused(result, *needles)
    assert list(workdir.iterdir()) == []


def test_upstream_fp16_flags_map_to_modes():
    from timmx.job_builder import build_job, with_defaults

    backend = get_backend("openvino")
    for given, mode in (({}, "fp16"), ({"fp16": False}, "fp32"), ({"fp16": True}, "fp16")):
        job = build_job(backend, "resnet18", with_defaults(backend, {**given, "output": "m.xml"}))
        assert backend.parse_options(job.options).resolved_mode == mode
    # Only the default, not a mode the user chose, falls back to float32 weights.
    assert backend.fallback(backend.parse_options({}))[0].resolved_mode == "fp32"
    assert backend.fallback(backend.parse_options({"mode": "fp16"})) is None
    assert backend.fallback(backend.parse_options({"fp16": True})) is None


def test_telemetry_is_off():
    from openvino_telemetry import Telemetry

    core()
    assert Telemetry().consent is False
