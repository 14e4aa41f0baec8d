"""Core AI exports of real timm models, read back and run here, apart from timmx.

coreai-core ships a runtime that runs an asset on Linux too (`AIModelAsset.executable()` lowers
it to ODIX, run on the CPU): the export is verified in it, and these tests read the saved
asset back with coreai themselves and run it against the checkpoint in a fresh timm model.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.version import Version

from tests.conftest import assert_matches, reference_model, require
from tests.report_files import assert_report_lists_the_files
from tests.test_errors import assert_refused

require("coreai_torch")

TIMES = "\N{MULTIPLICATION SIGN}"


def export(cli, ckpt: Path, out: str, *flags, model="resnet18", size=(32, 32), classes=10):
    return cli(
        "export", "coreai", model, "-c", ckpt, "--num-classes", classes,
        "--input-size", 3, *size, "-o", out, *flags,
    )  # fmt: skip


def signature(path: Path) -> tuple[list[str], list, list, dict]:
    """The asset's functions, main's inputs and outputs, and its metadata, as coreai reads them."""
    from coreai.authoring import AIModelAsset

    asset = AIModelAsset.load(path)
    summary = asset.summary(include_statistics=False)
    custom = asset.metadata.creator_defined_metadata
    return (
        list(summary.function_names),
        summary.function_inputs("main"),
        summary.function_outputs("main"),
        dict(custom),
    )


def run_asset(path: Path, x: np.ndarray) -> np.ndarray:
    from coreai.authoring import AIModelAsset
    from coreai.runtime import NDArray

    async def go() -> np.ndarray:
        async with AIModelAsset.load(path).executable() as model:
            function = model.load_function("main")
            outputs = await function({"input": NDArray(x.astype(np.float32))})
            return np.array(outputs["output"].numpy())

    return asyncio.run(go())


def expected(model: str, ckpt: Path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return reference_model(model, ckpt, num_classes=10)(x).numpy()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".pth"))


def test_fixed_batch_non_square(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "out/m.aimodel", size=(48, 64))
    assert result.code == 0, result.err
    artifact = workdir / "out" / "m.aimodel"
    assert artifact.is_dir() and (artifact / "main.mlirb").is_file()
    assert leftovers(workdir / "out") == ["m.aimodel", "m.aimodel.json"]

    report = assert_report_lists_the_files(artifact)
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["runtime"] == "coreai.runtime"
    assert [c["batch_size"] for c in verification["checks"]] == [1]
    assert "GPU or Neural Engine" in verification["note"] and "not checked" in verification["note"]
    details = verification["details"]
    assert details["functions"] == ["main"] and details["entrypoint"] == "main"
    assert details["inputs"] == [{"name": "input", "dtype": "Float32", "shape": [1, 3, 48, 64]}]
    assert details["outputs"] == [{"name": "output", "dtype": "Float32", "shape": [1, 10]}]
    assert details["ops"]["conv2d"] == 20
    assert details["storage"]["Float32"] > 11_000_000  # resnet18's weights
    assert details["metadata"]["timm.model"] == "resnet18"
    # coreai-torch's warning about the torch release, once, as a line of the report
    torch_release = torch.__version__.split("+")[0]
    said = [w for w in report["warnings"] if "validated with torch up to" in w]
    assert said == [] or (
        len(said) == 1 and f"this is torch {torch_release}" in said[0] and "verified" in said[0]
    )
    if version("coreai-torch") == "0.4.3" and Version(torch_release) > Version("2.13.0"):
        assert said, report["warnings"]

    # The asset itself, read back and run here: its signature, then a new input against timm.
    functions, inputs, outputs, custom = signature(artifact)
    assert functions == ["main"]
    assert inputs == [("input", f"NDArray (Float32, 1 {TIMES} 3 {TIMES} 48 {TIMES} 64)")]
    assert outputs == [("output", f"NDArray (Float32, 1 {TIMES} 10)")]
    assert custom["timm.input_size"] == "3,48,64" and custom["timm.num_classes"] == "10"
    x = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    reference = expected("resnet18", ckpt, x)
    assert_matches(run_asset(artifact, x.numpy()), reference)
    assert np.abs(reference).max() > 1e-2


def test_dynamic_batch(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "d.aimodel", "--dynamic-batch", "-b", 2)
    assert result.code == 0, result.err
    verification = result.report(workdir / "d.aimodel")["verification"]
    assert verification["status"] == "passed"
    assert [c["batch_size"] for c in verification["checks"]] == [2, 1]
    details = verification["details"]
    assert details["inputs"][0]["shape"] == [None, 3, 32, 32]
    assert details["outputs"][0]["shape"] == [None, 10]

    _, inputs, outputs, _ = signature(workdir / "d.aimodel")
    assert inputs == [("input", f"NDArray (Float32, ? {TIMES} 3 {TIMES} 32 {TIMES} 32)")]
    assert outputs == [("output", f"NDArray (Float32, ? {TIMES} 10)")]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    actual = run_asset(workdir / "d.aimodel", x.numpy())
    assert actual.shape == (3, 10)
    assert_matches(actual, expected("resnet18", ckpt, x))


def test_convnext_pools_a_channels_last_tensor(cli, workdir, make_checkpoint, monkeypatch):
    """ConvNeXt's head pools a channels-last tensor, which ATen decomposes into
    aten.as_strided: coreai-torch cannot lower that, so the backend keeps the pool whole. With
    coreai-torch's own table the failure is one line that names the op and what to do."""
    from timmx.backends._coreai import convert

    ckpt = make_checkpoint("convnext_atto", num_classes=10)
    result = export(cli, ckpt, "c.aimodel", model="convnext_atto")
    assert result.code == 0, result.err
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    assert_matches(run_asset(workdir / "c.aimodel", x.numpy()), expected("convnext_atto", ckpt, x))

    monkeypatch.setattr(convert, "decompositions", lambda coreai_torch: None)
    result = export(cli, ckpt, "u.aimodel", model="convnext_atto")
    assert_refused(result, "cannot convert convnext_atto", "aten.as_strided.default", "onnx")
    assert "register_torch_lowering" not in result.err
    assert leftovers(workdir) == ["c.aimodel", "c.aimodel.json"]


def test_a_wrong_asset_fails_verification(cli, workdir, make_checkpoint, monkeypatch):
    """Verification runs the saved asset: one converted from other weights is refused."""
    from timmx.backends._coreai import convert

    real = convert.convert

    def other_weights(coreai_torch, program, model_name):
        weights = program.state_dict
        (name,) = [k for k in weights if k.endswith("fc.weight")]
        weights[name] = torch.nn.Parameter(weights[name] * 1.5)  # timm's is untouched
        return real(coreai_torch, program, model_name)

    monkeypatch.setattr(convert, "convert", other_weights)
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = export(cli, ckpt, "w.aimodel")
    assert_refused(result, "verification failed in coreai.runtime", "No artifact was written")
    assert leftovers(workdir) == []


def test_re_export_replaces_the_asset(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    assert export(cli, ckpt, "r.aimodel").code == 0
    first = (workdir / "r.aimodel.json").read_text()
    result = export(cli, ckpt, "r.aimodel", "--no-verify")
    assert result.code == 0, result.err
    assert sorted(p.name for p in (workdir / "r.aimodel").iterdir()) == [
        "main.hash",
        "main.mlirb",
        "metadata.json",
    ]
    report = assert_report_lists_the_files(workdir / "r.aimodel")
    assert report["verification"]["status"] == "skipped"
    assert (workdir / "r.aimodel.json").read_text() != first  # replaced, not kept
    assert leftovers(workdir) == ["r.aimodel", "r.aimodel.json"]
    # A file the user put into the asset is not timmx's to remove: refused, nothing touched.
    (workdir / "r.aimodel" / "notes.txt").write_text("mine")
    assert_refused(export(cli, ckpt, "r.aimodel"), "notes.txt", "timmx did not make")
    assert (workdir / "r.aimodel" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--dynamic-batch"], ["--dynamic-batch", "--batch-size 2"]),
        (["-o", "m.onnx"], ["must end with .aimodel"]),
        (["-o", "m"], ["must end with .aimodel"]),  # the asset is a folder, but not any folder
    ],
)
def test_refusals_are_one_line_and_leave_nothing(cli, workdir, flags, needles):
    result = cli("export", "coreai", "resnet18", "--input-size", 3, 32, 32, *flags)
    assert_refused(result, *needles)
    assert leftovers(workdir) == []


def test_a_file_in_the_way_is_refused(cli, workdir):
    (workdir / "f.aimodel").write_text("not an asset")
    result = cli("export", "coreai", "resnet18", "--input-size", 3, 32, 32, "-o", "f.aimodel")
    assert_refused(result, "exists and is of another kind")
    assert (workdir / "f.aimodel").read_text() == "not an asset"
