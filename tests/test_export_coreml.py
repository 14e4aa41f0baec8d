"""Core ML exports of real timm models, for each option, verified on Linux.

Core ML does not predict off macOS; the independent checks here evaluate the saved ML program
with timmx.mil_reference (itself checked op by op in tests/test_mil_reference.py) and compare
it with the checkpoint loaded into a fresh timm model.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model, require
from tests.test_errors import assert_refused
from timmx.mil_reference import Evaluator, load_program

require("coremltools")

SIZE = 32


def export(cli, ckpt: Path, out: str, *flags, model="resnet18", size=SIZE, classes=10):
    return cli(
        "export",
        "coreml",
        model,
        "-c",
        ckpt,
        "--num-classes",
        classes,
        "--input-size",
        3,
        size,
        size,
        "-o",
        out,
        *flags,
    )


def run_program(path: Path, x: np.ndarray, name: str = "input") -> dict:
    return Evaluator(load_program(path)).run({name: x.astype(np.float32)})


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".pth", ".txt")))


@pytest.mark.parametrize(
    ("model", "size", "kwargs", "flags", "rel"),
    [
        ("resnet18", 64, {}, ["--compute-precision", "float32"], 1e-4),
        ("mobilenetv3_small_100", 64, {}, [], 2e-2),  # float16 compute, the default
        ("vit_tiny_patch16_224", 32, {"img_size": 32}, ["--source", "torch-export"], 2e-2),
    ],
)
def test_export_matches_pytorch(cli, workdir, make_checkpoint, model, size, kwargs, flags, rel):
    ckpt = make_checkpoint(model, num_classes=10, **kwargs)
    extra = [a for k, v in kwargs.items() for a in ("--model-kwarg", f"{k}={v}")]
    result = export(cli, ckpt, "out/m.mlpackage", *flags, *extra, model=model, size=size)
    assert result.code == 0, result.err
    artifact = workdir / "out/m.mlpackage"
    assert artifact.is_dir() and (artifact / "Manifest.json").is_file()
    report = result.report(artifact)
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["runtime"] == "timmx.mil_reference (numpy)"
    assert "numerics were checked" in verification["note"]
    details = verification["details"]
    assert details["format"] == "mlprogram"
    assert details["inputs"] == [
        {"name": "input", "type": "multiArray", "dtype": "FLOAT32", "shape": [1, 3, size, size]}
    ]
    assert details["outputs"][0]["name"] == "output"
    assert details["outputs"][0]["shape"] == [1, 10]
    assert details["op_count"] > 10 and details["ops"]["conv"] >= 1
    assert details["metadata"]["timm.model"] == model
    assert details["metadata"]["timm.input_size"] == f"3,{size},{size}"
    assert details["metadata"]["timm.num_classes"] == "10"
    assert {f["path"].split("/")[-1] for f in report["artifacts"]} >= {"weight.bin"}

    # An independent comparison: the saved program on a new input against a fresh timm model.
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference_model(model, ckpt, num_classes=10, **kwargs)(x).numpy()
    assert_matches(run_program(artifact, x.numpy())["output"], expected, rel=rel)
    assert np.abs(expected).max() > 1e-2


@pytest.mark.parametrize(
    ("flags", "found", "opset", "rel"),
    [
        (
            ["--int8", "--compute-precision", "float32"],
            "constexpr_affine_dequantize(int8)",
            6,
            0.05,
        ),
        (["--int4-linear"], "constexpr_blockwise_shift_scale(int4)", 8, 0.5),
        (["--palettize", "4"], "constexpr_lut_to_dense(lut4)", 6, 0.5),
    ],
    ids=["int8", "int4-linear", "palettize4"],
)
def test_weight_compression(cli, workdir, make_checkpoint, flags, found, opset, rel):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "c.mlpackage", *flags)
    assert result.code == 0, result.err
    report = result.report(workdir / "c.mlpackage")
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["rtol"] == rel
    assert verification["details"]["weights"]["compressed"][found] >= 15
    assert verification["details"]["opset"] == f"CoreML{opset}"
    if "--int4-linear" in flags:
        assert any("raised to iOS18" in w for w in report["warnings"])

    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    program = workdir / "c.mlpackage"
    actual = np.concatenate([run_program(program, s[None].numpy())["output"] for s in x])
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert 1e-4 < error < rel  # compressed for real, and within the tolerance


@pytest.mark.parametrize(
    ("out", "flags", "weights"),
    [
        ("nn.mlmodel", [], {"fp32"}),
        ("nn.mlmodel", ["--int8"], {"int8-linear"}),
        ("nn.mlpackage", ["--half"], {"fp16"}),
    ],
    ids=["plain", "int8", "half"],
)
def test_neuralnetwork(cli, workdir, make_checkpoint, out, flags, weights):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, out, "--convert-to", "neuralnetwork", *flags)
    assert result.code == 0, result.err
    artifact = workdir / out
    assert artifact.is_file() == out.endswith(".mlmodel")
    verification = result.report(artifact)["verification"]
    assert verification["status"] == "skipped"
    assert "neural network" in verification["note"] and "numerics were not" in verification["note"]
    details = verification["details"]
    assert details["format"] == "neuralnetwork"
    assert set(details["weights"]) == weights
    assert details["layers"]["convolution"] == 20
    assert details["inputs"][0]["shape"] == [1, 3, SIZE, SIZE]
    assert leftovers(workdir) == sorted([out, f"{out}.json"])


def test_dynamic_batch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    flags = ["--dynamic-batch", "--batch-upper-bound", "4", "--compute-precision", "float32"]
    result = export(cli, ckpt, "d.mlpackage", *flags)
    assert result.code == 0, result.err
    verification = result.report(workdir / "d.mlpackage")["verification"]
    assert [c["batch_size"] for c in verification["checks"]] == [1, 3]
    assert verification["details"]["inputs"][0]["ranges"][0] == [1, 4]

    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    assert_matches(run_program(workdir / "d.mlpackage", x.numpy())["output"], expected)


def test_dynamic_batch_from_torch_export_gets_a_bound(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    flags = ["--dynamic-batch", "--batch-size", "2", "--source", "torch-export"]
    result = export(cli, ckpt, "e.mlpackage", *flags)
    assert result.code == 0, result.err
    report = result.report(workdir / "e.mlpackage")
    assert any("batches of 1 to 64" in w for w in report["warnings"])
    assert [c["batch_size"] for c in report["verification"]["checks"]] == [2, 1]
    assert report["verification"]["details"]["inputs"][0]["ranges"][0] == [1, 64]

    # The package itself: its input's batch range, read from its spec, and a batch of 5 run
    # through the saved program, compared with timm.
    import coremltools as ct

    spec = ct.utils.load_spec(str(workdir / "e.mlpackage"))
    batch = spec.description.input[0].type.multiArrayType.shapeRange.sizeRanges[0]
    assert (batch.lowerBound, batch.upperBound) == (1, 64)
    x = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    actual = run_program(workdir / "e.mlpackage", x.numpy())["output"]
    assert actual.shape == (5, 10)
    assert_matches(actual, expected, rel=2e-2)  # float16 compute, the default


def test_image_input_classifier(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=5)
    labels = ["cat", "dog", "owl", "eel", "yak"]
    (workdir / "labels.txt").write_text("\n".join(labels) + "\n")
    flags = ["--image-input", "--normalize", "--softmax", "--labels", "labels.txt"]
    result = export(cli, ckpt, "i.mlpackage", *flags, "--compute-precision", "float32", classes=5)
    assert result.code == 0, result.err
    verification = result.report(workdir / "i.mlpackage")["verification"]
    assert verification["status"] == "passed"
    details = verification["details"]
    assert details["inputs"] == [
        {"name": "image", "type": "image", "width": SIZE, "height": SIZE, "color": "RGB"}
    ]
    assert details["classifier"]["labels"] == 5
    assert {o["type"] for o in details["outputs"]} == {"string", "dictionary"}
    assert details["metadata"]["timmx.input"] == "image"

    # Vision feeds 0-255 pixels; the program normalises them with the model's mean and std.
    pixels = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        model = reference_model("resnet18", ckpt, num_classes=5)
        expected = model((pixels - mean) / std).softmax(-1).numpy()
    outputs = run_program(workdir / "i.mlpackage", pixels.numpy() * 255, name="image")
    probabilities = outputs[details["classifier"]["probabilities_output"]]
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert outputs["classLabel"] == labels[int(expected.argmax())]


def test_image_input_without_normalize(cli, workdir, make_checkpoint):
    """The image input normalises either way; verification maps PyTorch's normalised inputs
    back to pixels with the mean and std the artifact records."""
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "p.mlpackage", "--image-input")
    assert result.code == 0, result.err
    verification = result.report(workdir / "p.mlpackage")["verification"]
    assert verification["status"] == "passed"
    assert verification["details"]["metadata"]["timmx.normalize"] == "false"

    pixels = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6)) * 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)((pixels / 255 - mean) / std)
    actual = run_program(workdir / "p.mlpackage", pixels.numpy(), name="image")["output"]
    assert_matches(actual, expected.numpy(), rel=2e-2)  # float16 compute


def _largest_weight(artifact: Path) -> tuple[int, int]:
    """(offset, bytes) of the data of the largest weight blob in weight.bin."""
    from timmx.backends._coreml.inspect import read_spec

    function = read_spec(artifact).mlProgram.functions["main"]
    best = None
    for op in function.block_specializations[function.opset].operations:
        value = op.attributes.get("val") if op.type == "const" else None
        if value is not None and value.WhichOneof("value") == "blobFileValue":
            size = np.prod([d.constant.size for d in value.type.tensorType.dimensions])
            if best is None or size > best[0]:
                best = (size, value.blobFileValue.offset)
    weights = artifact / "Data/com.apple.CoreML/weights/weight.bin"
    header = weights.read_bytes()[best[1] : best[1] + 24]
    sentinel, _, size, offset = struct.unpack("<IIQQ", header)
    assert sentinel == 0xDEADBEEF
    return offset, size


def test_corrupted_weights_fail_verification(cli, workdir, make_checkpoint, monkeypatch):
    from timmx.backends.coreml import CoremlBackend

    original = CoremlBackend.export

    def export_then_corrupt(self, ctx, options):
        files = original(self, ctx, options)
        offset, size = _largest_weight(ctx.artifact)
        path = ctx.artifact / "Data/com.apple.CoreML/weights/weight.bin"
        data = np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()
        data[offset + 3 : offset + size : 4] ^= 0x80  # negate every fp32 weight of one conv
        path.write_bytes(data.tobytes())
        return files

    monkeypatch.setattr(CoremlBackend, "export", export_then_corrupt)
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "bad.mlpackage", "--compute-precision", "float32")
    assert_refused(result, "verification failed", "timmx.mil_reference")
    assert leftovers(workdir) == []


def test_unsupported_op_is_named_not_skipped_silently(cli, workdir, make_checkpoint, monkeypatch):
    from timmx.mil_reference.registry import load_all

    monkeypatch.delitem(load_all(), "relu")
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "u.mlpackage")
    assert result.code == 0, result.err
    verification = result.report(workdir / "u.mlpackage")["verification"]
    assert verification["status"] == "skipped"
    assert "numerics not checked" in verification["note"] and "relu (x17)" in verification["note"]
    assert verification["details"]["unsupported_ops"] == {"relu": 17}


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--convert-to", "neuralnetwork", "--compute-precision", "float32"], ["mlprogram only"]),
        (["--half"], ["--half is for neuralnetwork"]),
        (["--convert-to", "neuralnetwork", "--int4-linear"], ["--int4-linear", "mlprogram"]),
        (["--convert-to", "neuralnetwork", "--int4"], ["--int4", "k-means", "mlprogram"]),
        (["--convert-to", "neuralnetwork", "--palettize", "4"], ["--palettize", "mlprogram"]),
        (["--int8", "--palettize", "4"], ["--int8 and --palettize", "exclude each other"]),
        (["--int8", "--int4"], ["exclude each other"]),
        (["--int4", "--int4-linear"], ["exclude each other"]),
        (["--batch-upper-bound", "4"], ["needs --dynamic-batch"]),
        (["--dynamic-batch", "-b", "8", "--batch-upper-bound", "4"], ["above"]),
        (["--batch-upper-bound", "1", "--dynamic-batch"], ["--batch-upper-bound"]),
        (["--palettize", "5"], ["--palettize", "1, 2, 3, 4, 6, 8"]),
        (["--palettize", "3"], ["iOS18"]),
        (["--int4-linear", "--minimum-deployment-target", "iOS17"], ["--int4-linear", "iOS18"]),
        (["--int4-linear", "--minimum-deployment-target", "macOS14"], ["macOS15"]),
        (["--int4", "--minimum-deployment-target", "iOS15"], ["--int4", "iOS16"]),
        (["--int8", "--minimum-deployment-target", "iOS15"], ["--int8", "iOS16"]),
        (["--minimum-deployment-target", "iOS14"], ["mlprogram", "iOS15"]),
        (["--convert-to", "neuralnetwork", "--minimum-deployment-target", "iOS16"], ["iOS16"]),
        (["--minimum-deployment-target", "iOS99"], ["--minimum-deployment-target"]),
        (["--image-input", "--dynamic-batch"], ["one image at a time"]),
        (["--image-input", "--in-chans", "4"], []),  # refused after building
        (["-o", "m.mlmodel"], [".mlpackage", "neuralnetwork"]),
        (["-o", "m.onnx"], ["must end with .mlpackage or .mlmodel"]),
    ],
)
def test_bad_flag_combinations(cli, workdir, flags, needles):
    if "--in-chans" in flags:
        flags = [*flags, "--input-size", "4", "32", "32"]
        needles = ["--image-input", "channels"]
    else:
        flags = [*flags, "--input-size", "3", "32", "32"]
    assert_refused(cli("export", "coreml", "resnet18", *flags), *needles)
    assert leftovers(workdir) == []


def test_labels_must_fit_the_model(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    (workdir / "three.txt").write_text("a\nb\nc\n")
    assert_refused(
        export(cli, ckpt, "l.mlpackage", "--labels", "three.txt"), "3 labels", "10 classes"
    )
    assert_refused(export(cli, ckpt, "l.mlpackage", "--labels", "nope.txt"), "not found")
    assert leftovers(workdir) == []  # nothing written (leftovers() passes over the labels)


def test_converter_failure_is_one_line_with_the_fix(cli, workdir):
    if tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 4):
        pytest.skip("coremltools' TorchScript frontend fails this way with numpy >= 2.4 only")
    args = ("export", "coreml", "edgenext_xx_small", "--input-size", 3, 64, 64)
    result = cli(*args, "--source", "trace")
    assert_refused(
        result, "coremltools could not convert edgenext_xx_small", "--source torch-export"
    )
    assert leftovers(workdir) == []


def test_default_source_falls_back_to_torch_export(cli, workdir, make_checkpoint):
    """The trace fails for edgenext here (numpy >= 2.4): without --source, torch.export's
    program converts, the report says so, and the artifact matches PyTorch."""
    ckpt = make_checkpoint("edgenext_xx_small", num_classes=10)
    result = export(
        cli,
        ckpt,
        "e.mlpackage",
        "--compute-precision",
        "float32",
        model="edgenext_xx_small",
        size=64,
    )
    assert result.code == 0, result.err
    report = result.report(workdir / "e.mlpackage")
    details = report["verification"]["details"]
    trace_failed = tuple(int(p) for p in np.__version__.split(".")[:2]) >= (2, 4)
    assert details["source"] == ("torch-export" if trace_failed else "trace")
    if trace_failed:
        assert any("TorchScript trace" in w for w in report["warnings"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = reference_model("edgenext_xx_small", ckpt, num_classes=10)(x).detach().numpy()
    actual = run_program(workdir / "e.mlpackage", x.numpy())["output"]
    assert_matches(actual, expected, rel=1e-3)


def test_float16_overflow_is_named_with_the_fix_that_works(cli, workdir, make_checkpoint):
    state = torch.load(make_checkpoint("resnet18", num_classes=10), weights_only=True)
    state["fc.weight"] *= 1e5  # logits far beyond float16's 65504
    torch.save(state, workdir / "big.pth")
    insisted = ("--compute-precision", "float16")
    result = export(cli, workdir / "big.pth", "big.mlpackage", *insisted)
    assert_refused(result, "not finite", "float16 overflowed", "--compute-precision float32")
    assert "--atol" not in result.err
    assert leftovers(workdir) == []  # nothing written (leftovers() passes over the .pth)


def test_default_precision_falls_back_to_float32_when_float16_fails(cli, workdir, make_checkpoint):
    """The user chose no precision: float16 overflows, so the package computes in float32,
    checked against timm, and the report says why."""
    state = torch.load(make_checkpoint("resnet18", num_classes=10), weights_only=True)
    state["fc.weight"] *= 1e5
    torch.save(state, workdir / "big.pth")
    result = export(cli, workdir / "big.pth", "big.mlpackage")
    assert result.code == 0, result.err
    report = result.report(workdir / "big.mlpackage")
    assert any("computes in float32" in w and "inf" in w for w in report["warnings"])
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    model = reference_model("resnet18", workdir / "big.pth", num_classes=10)
    with torch.no_grad():
        expected = model(x).numpy()
    assert np.abs(expected).max() > 65504  # beyond float16
    actual = run_program(workdir / "big.mlpackage", x.numpy())["output"]
    assert np.isfinite(actual).all()
    assert_matches(actual, expected, rel=1e-3)


def test_a_neuralnetwork_is_never_said_to_be_verified_numerically(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "n.mlmodel", "--convert-to", "neuralnetwork")
    assert result.code == 0, result.err
    report = result.report(workdir / "n.mlmodel")
    assert report["verification"]["status"] == "skipped"
    said = " ".join([*report["warnings"], result.out])
    assert "verified numerically" not in said
