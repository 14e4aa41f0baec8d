"""Core ML in its own image: the program is converted, compressed and verified in the container
(timmx's numpy evaluator of the saved ML program), with the same weights as in-process."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model, require
from tests.isolated.helpers import build_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "32")
WEIGHTS = "Data/com.apple.CoreML/weights/weight.bin"


@pytest.fixture(scope="module")
def coreml_image(docker_client) -> float:
    return build_image("coreml")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_isolated_int8_matches_in_process(
    cli, workdir, make_checkpoint, coreml_image, no_leftovers
):
    require("coremltools")
    from timmx.mil_reference import Evaluator, load_program

    ckpt = make_checkpoint("resnet18", num_classes=10)
    flags = ("coreml", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE, "--int8")
    local = cli("export", *flags, "-o", "local/m.mlpackage")
    assert local.code == 0, local.err
    isolated = cli("export", *flags, "-o", "iso/m.mlpackage", "--isolated")
    assert isolated.code == 0, isolated.err

    artifact = workdir / "iso" / "m.mlpackage"
    report = isolated.report(artifact)
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-coreml:")
    assert report["environment"]["packages"]["coremltools"] == "9.0"
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["runtime"] == "timmx.mil_reference (numpy)"
    local_report = local.report(workdir / "local" / "m.mlpackage")
    assert verification["details"]["weights"] == local_report["verification"]["details"]["weights"]
    assert report["model"] == local_report["model"]
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == [
        "m.mlpackage",
        "m.mlpackage.json",
    ]
    for path in [artifact, *artifact.rglob("*")]:  # the folder and everything in it
        assert path.stat().st_uid == os.getuid(), path
    assert _sha256(artifact / WEIGHTS) == _sha256(workdir / "local" / "m.mlpackage" / WEIGHTS)
    assert_report_lists_the_files(artifact)  # every member of the package, rehashed here

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ours = Evaluator(load_program(artifact)).run({"input": x.numpy()})["output"]
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    assert_matches(ours, expected, rel=0.05)


def test_isolated_neuralnetwork_mlmodel(cli, workdir, make_checkpoint, coreml_image, no_leftovers):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "coreml", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "--convert-to", "neuralnetwork", "--half", "-o", "n.mlmodel", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    artifact = workdir / "n.mlmodel"
    assert artifact.is_file()
    verification = result.report(artifact)["verification"]
    assert verification["status"] == "skipped"
    assert verification["details"]["weights"] == {"fp16": 21}
    assert "numerics were not" in verification["note"]

    # No runtime here: check the weights instead. The classifier's, read back from the spec,
    # are the checkpoint's in float16.
    import coremltools as ct

    spec = ct.utils.load_spec(str(artifact))
    dense = [
        layer for layer in spec.neuralNetwork.layers if layer.WhichOneof("layer") == "innerProduct"
    ]
    assert len(dense) == 1
    ip = dense[0].innerProduct
    weights = np.frombuffer(ip.weights.float16Value, dtype=np.float16).reshape(10, 512)
    bias = np.frombuffer(ip.bias.float16Value, dtype=np.float16)
    state = torch.load(ckpt, weights_only=True)
    np.testing.assert_array_equal(weights, state["fc.weight"].numpy().astype(np.float16))
    np.testing.assert_array_equal(bias, state["fc.bias"].numpy().astype(np.float16))


def test_isolated_refusal_is_one_line(cli, workdir, coreml_image, no_leftovers):
    result = cli("export", "coreml", "resnet18", *SIZE, "--half", "--isolated")
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--half is for neuralnetwork" in errors[0], result.err
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_isolated_labels_file_is_mounted(cli, workdir, coreml_image, no_leftovers):
    (workdir / "meta").mkdir()
    (workdir / "meta" / "labels.txt").write_text("cat\ndog\nowl\n")
    result = cli(
        "export", "coreml", "resnet18", "--num-classes", 3, *SIZE, "--labels",
        "meta/labels.txt", "-o", "l.mlpackage", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(workdir / "l.mlpackage")
    assert report["verification"]["details"]["classifier"]["labels"] == 3
    assert report["job"]["options"]["labels"] == "meta/labels.txt"  # the host's path

    missing = cli(
        "export", "coreml", "resnet18", "--num-classes", 3, *SIZE, "--labels", "nope.txt",
        "-o", "m.mlpackage", "--isolated",
    )  # fmt: skip
    assert missing.code == 2
    assert "--labels file not found" in missing.err
