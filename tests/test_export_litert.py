"""LiteRT exports of real timm models in every mode, checked in the LiteRT interpreter.

Each comparison here is independent of timmx's own verification: the artifact runs in
ai-edge-litert's Interpreter, fed by this file (int8 inputs quantized with the input tensor's own
scale and zero point), against the checkpoint loaded into a fresh timm model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter

from tests.conftest import reference_model
from tests.test_calibration import write_images
from tests.test_errors import assert_refused

SIZE = 32


def run_tflite(path: Path, x: np.ndarray, nhwc: bool = False) -> np.ndarray:
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for sample in x:
        sample = sample[None].transpose(0, 2, 3, 1) if nhwc else sample[None]
        if source["dtype"] == np.int8:
            scale, zero = source["quantization"]
            sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(source["index"], sample.astype(source["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(target["index"])
        if target["dtype"] == np.int8:
            scale, zero = target["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        outputs.append(y)
    return np.concatenate(outputs)


def compare(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float, float]:
    """Max abs error, that error over the output's scale, top-1 agreement."""
    error = float(np.abs(actual - expected).max())
    scale = float(np.abs(expected).max())
    top1 = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    return error, error / scale, top1


def export(cli, workdir: Path, model: str, ckpt: Path, out: str, *flags, size: int = SIZE):
    result = cli(
        "export", "litert", model, "-c", ckpt, "--num-classes", 10, "--input-size", 3, size, size,
        "-o", out, "--json", *flags,
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / out)
    assert json.loads(result.out) == report  # converters print nothing on stdout
    assert report["status"] == "success"
    assert report["verification"]["status"] == "passed"
    return report


def inputs(count: int = 8, size: int = SIZE, seed: int = 5) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


# mode -> (max error over the output's scale, what the weights must be stored as)
MODES = {
    "fp32": (1e-5, "float32"),
    "fp16": (5e-3, "float16"),
    "dynamic-int8": (0.08, "int8"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_modes_match_pytorch(cli, workdir, make_checkpoint, mode):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    report = export(cli, workdir, "resnet18", ckpt, f"{mode}.tflite", "--mode", mode)
    limit, weights = MODES[mode]
    assert {"litert-torch", "ai-edge-litert"} <= set(report["environment"]["packages"])
    details = report["verification"]["details"]
    assert details["mode"] == mode and details["constant_types"].get(weights)
    first = details["inputs"][0]
    assert set(first) == {"name", "shape", "dtype"} and first["name"]
    assert (first["shape"], first["dtype"]) == ([1, 3, SIZE, SIZE], "float32")
    check = report["verification"]["checks"][0]
    assert check["max_rel_error"] <= limit

    x = inputs()
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert np.abs(expected).max() > 0.5  # the weights are not trivial
    error, relative, top1 = compare(run_tflite(workdir / f"{mode}.tflite", x.numpy()), expected)
    assert relative <= limit, (error, relative)
    assert top1 >= (1.0 if mode != "dynamic-int8" else 0.75)


def test_int8_from_a_calibration_tensor(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    torch.save(inputs(12, seed=11), workdir / "calib.pt")
    report = export(
        cli,
        workdir,
        "resnet18",
        ckpt,
        "int8.tflite",
        "--mode",
        "int8",
        "--calibration-data",
        "calib.pt",
        "--calibration-steps",
        8,
    )
    assert report["warnings"] == []
    assert report["job"]["calibration"] == {
        "path": "calib.pt",
        "samples": None,
        "steps": 8,
        "random": False,
    }
    details = report["verification"]["details"]
    assert details["inputs"][0]["dtype"] == details["outputs"][0]["dtype"] == "float32"
    assert details["ops"]["QUANTIZE"] >= 1 and details["constant_types"]["int8"] >= 20

    x = inputs()
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    actual = run_tflite(workdir / "int8.tflite", x.numpy())
    error, relative, top1 = compare(actual, expected)
    assert relative <= 0.1 and top1 >= 0.75, (error, relative, top1)

    # The int8 tolerance still catches a broken graph: a sign flip in the logits.
    from timmx.backends.litert import TOLERANCES
    from timmx.verification import compare as verify_compare

    assert not verify_compare(expected, -actual, TOLERANCES["int8"], 8).passed


def test_int8_io_nhwc_from_an_image_folder(cli, workdir, make_checkpoint):
    """Android's usual int8 model: channels-last int8 input, calibrated on a folder of images
    preprocessed with the model's own data config."""
    ckpt = make_checkpoint("resnet18", num_classes=10)
    write_images(workdir / "images", 8, size=(40, 36))
    report = export(
        cli,
        workdir,
        "resnet18",
        ckpt,
        "q.tflite",
        "--mode",
        "int8",
        "--calibration-data",
        "images",
        "--nhwc-input",
        "--int8-io",
        "--calibration-samples",
        6,
    )
    details = report["verification"]["details"]
    source, target = details["inputs"][0], details["outputs"][0]
    assert source["shape"] == [1, SIZE, SIZE, 3] and details["layout"] == "NHWC"
    assert source["dtype"] == target["dtype"] == "int8"
    assert source["scale"] > 0 and target["scale"] > 0

    from PIL import Image
    from timm.data import resolve_data_config

    from timmx.calibration import Target, image_transform

    model = reference_model("resnet18", ckpt, num_classes=10)
    # The same preprocessing the calibration used: ImageNet mean/std, the export's size.
    config = resolve_data_config({}, model=model)
    transform = image_transform(config, Target(size=(3, SIZE, SIZE), batch_size=1, pixels=False))

    images = sorted((workdir / "images").rglob("*.png"))
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in images])
    expected = model(x).detach().numpy()
    actual = run_tflite(workdir / "q.tflite", x.numpy(), nhwc=True)
    error, relative, top1 = compare(actual, expected)
    assert relative <= 0.1 and top1 >= 0.75, (error, relative, top1)


def test_nhwc_mobilenetv3_fp32(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("mobilenetv3_small_100", num_classes=10)
    report = export(
        cli, workdir, "mobilenetv3_small_100", ckpt, "m.tflite", "--nhwc-input", size=64
    )
    assert report["verification"]["details"]["inputs"][0]["shape"] == [1, 64, 64, 3]
    x = inputs(2, size=64)
    expected = reference_model("mobilenetv3_small_100", ckpt, num_classes=10)(x).detach().numpy()
    error, relative, _ = compare(run_tflite(workdir / "m.tflite", x.numpy(), nhwc=True), expected)
    assert relative <= 1e-5, error


def test_vit_tiny_int8_on_random_calibration_warns(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("vit_tiny_patch16_224", num_classes=10, img_size=SIZE)
    report = export(
        cli,
        workdir,
        "vit_tiny_patch16_224",
        ckpt,
        "vit.tflite",
        "--model-kwarg",
        f"img_size={SIZE}",
        "--mode",
        "int8",
        "--random-calibration",
        "--calibration-steps",
        8,
    )
    assert any("not for production" in w for w in report["warnings"])
    x = inputs(4)
    model = reference_model("vit_tiny_patch16_224", ckpt, num_classes=10, img_size=SIZE)
    expected = model(x).detach().numpy()
    error, relative, _ = compare(run_tflite(workdir / "vit.tflite", x.numpy()), expected)
    assert relative <= 0.12, error  # 0.07 measured with 8 batches of noise


def test_failed_verification_keeps_the_old_artifact(cli, workdir, monkeypatch):
    from timmx.backends.litert import LiteRTBackend

    (workdir / "m.tflite").write_bytes(b"previous verified artifact")
    original = LiteRTBackend.load_runtime

    def broken_runtime(self, artifact, options):
        run = original(self, artifact, options)
        return lambda x: run(x[:, ::-1].copy())  # channels swapped: a miswired input

    monkeypatch.setattr(LiteRTBackend, "load_runtime", broken_runtime)
    result = cli("export", "litert", "resnet18", "--input-size", 3, SIZE, SIZE, "-o", "m.tflite")
    assert_refused(result, "verification failed in ai-edge-litert interpreter")
    assert (workdir / "m.tflite").read_bytes() == b"previous verified artifact"
    assert sorted(p.name for p in workdir.iterdir()) == ["m.tflite"]
