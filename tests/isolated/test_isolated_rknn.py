"""RKNN in its own image (rknn-toolkit2 2.5.0 on torch 2.4): exported with --isolated and checked
from its report and in the toolkit; its numbers compared here with a fresh timm model.

rknn-toolkit2 simulates only a model built in the same session: it refuses to run a saved .rknn
(load_rknn) on x86. So `run_rknn` exports in the image with timmx's CLI, in this test's own
Python process there, and runs the toolkit session that wrote that .rknn on our inputs itself
(NCHW, said so to the toolkit); the --isolated artifact is read back with load_rknn. It is also
the conformance suite's runner (on the export the suite made in the image)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image
from tests.isolated.in_image import run_in_image
from tests.report_files import assert_report_lists_the_files
from tests.test_calibration import write_images

pytestmark = pytest.mark.isolated("rknn")  # built last: see tests/prebuild.py

# Runs in the image with /check (read-only) holding the inputs, the checkpoint, the calibration
# data and the --isolated artifact: exports again with timmx's CLI in this process, then runs the
# toolkit session that built that .rknn. The toolkit logs on stdout: the JSON is printed last.
RUN_RKNN = """
import hashlib, json, os, shutil
from pathlib import Path
import numpy as np

shutil.copytree("/check", "/tmp/w")
os.chdir("/tmp/w")
from timmx.cli.app import main
try:
    main({args!r} + ["-o", "/tmp/w/out/m.rknn"])
except SystemExit as exc:
    assert not exc.code, f"the export in the image failed ({{exc.code}})"
from rknn.api import RKNN
from timmx.backends.rknn import _SESSIONS

artifact = Path("/tmp/w/out/m.rknn")
rknn = _SESSIONS[hashlib.sha256(artifact.read_bytes()).hexdigest()]
outputs = {{}}
for key in {inputs!r}:
    x = np.load(f"/check/{{key}}.npy")
    y = rknn.inference(inputs=[x], data_format=["nchw"])[0]
    outputs[key] = np.asarray(y, dtype=np.float32).reshape(len(x), -1).tolist()
loads = {{}}
for name in {artifacts!r}:
    reader = RKNN(verbose=False)
    loads[name] = reader.load_rknn(f"/check/{{name}}") == 0
    reader.release()
print(json.dumps({{"outputs": outputs, "loads": loads}}))
"""


def run_rknn(
    folder: Path, args: list[Any], inputs: dict[str, np.ndarray], artifacts: list[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    """Export `args` (timmx export ... without -o, paths relative to `folder`) in the rknn image,
    run the toolkit session that built it on each named NCHW input; whether each of `artifacts`
    (in `folder`) loads in the toolkit."""
    for key, x in inputs.items():
        np.save(folder / f"{key}.npy", np.ascontiguousarray(x, dtype=np.float32))
    script = RUN_RKNN.format(
        args=[str(a) for a in args], inputs=list(inputs), artifacts=list(artifacts)
    )
    answer = run_in_image("rknn", script, folder)
    outputs = {key: np.asarray(value, dtype=np.float32) for key, value in answer["outputs"].items()}
    return outputs, answer["loads"]


def run_rknn_job(artifact: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The conformance suite's runner: the job in `artifact`'s report (its checkpoint and
    calibration data copied beside the inputs) exported again in the image by run_rknn, which
    runs that build on the inputs; the artifact itself must load in the toolkit."""
    job = json.loads(artifact.with_name(artifact.name + ".json").read_text())["job"]
    output = Path(job["output"])  # relative to the workspace, as the job's other paths
    workspace = artifact.parents[len(output.parts) - 1] if not output.is_absolute() else Path("/")
    model, options = job["model"], job["options"]
    assert not job["preprocess"]["normalize"] and not job["input"]["dynamic_batch"]
    args: list[Any] = [
        "export", "rknn", model["name"], "--num-classes", model["num_classes"],
        "--input-size", *job["input"]["size"], "--batch-size", job["input"]["batch_size"],
        "--target-platform", options["target_platform"], "--mode", options["mode"],
        "--opset", options["opset"],
    ]  # fmt: skip
    if not options["per_channel"]:
        args.append("--no-per-channel")
    folder = artifact.parent / "rknn-check"
    folder.mkdir()
    shutil.copy(artifact, folder / artifact.name)
    if model["checkpoint"]:
        shutil.copy(workspace / model["checkpoint"], folder / "model.pth")
        args += ["-c", "model.pth"]
    calibration = job["calibration"]
    if calibration and calibration["path"]:
        source = workspace / calibration["path"]
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, folder / ("calibration" + source.suffix))
        args += ["--calibration-data", "calibration" + source.suffix]
    elif calibration:
        args.append("--random-calibration")
    try:
        outputs, loads = run_rknn(folder, args, inputs, [artifact.name])
    finally:
        shutil.rmtree(folder)
    assert loads == {artifact.name: True}
    return outputs


@pytest.fixture(scope="module")
def rknn_image(docker_client) -> float:
    return build_image("rknn")


def _stage(artifact: Path, ckpt: Path, extra: dict[str, Path] = {}) -> Path:  # noqa: B006
    """A folder for run_rknn: the artifact, the checkpoint and the calibration data."""
    folder = artifact.parent.parent / "check"
    folder.mkdir()
    shutil.copy(artifact, folder / artifact.name)
    shutil.copy(ckpt, folder / "model.pth")
    for name, path in extra.items():
        shutil.copytree(path, folder / name)
    return folder


def test_fp16_in_its_image_matches_timm(cli, workdir, make_checkpoint, rknn_image, no_leftovers):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    args = ["export", "rknn", "resnet18", "--num-classes", 10, "--input-size", 3, 32, 48,
            "--target-platform", "rk3588"]  # fmt: skip
    result = cli(*args, "-c", ckpt, "-o", "out/r.rknn", "--isolated")
    assert result.code == 0, result.err
    artifact = workdir / "out/r.rknn"
    report = result.report(artifact)
    environment = report["environment"]
    assert environment["runner"] == "docker"
    assert environment["image"].split("/")[-1].startswith("timmx-rknn:")
    assert environment["packages"]["rknn-toolkit2"] == "2.5.0"
    assert environment["packages"]["torch"].startswith("2.4.")
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert "NPU itself was not run" in verification["note"]
    assert verification["details"]["target_platform"] == "rk3588"
    assert_report_lists_the_files(artifact)
    assert sorted(p.name for p in artifact.parent.iterdir()) == ["r.rknn", "r.rknn.json"]

    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(6))  # non-square
    folder = _stage(artifact, ckpt)
    outputs, loads = run_rknn(
        folder, [*args, "-c", "model.pth"], {f"x{i}": s[None].numpy() for i, s in enumerate(x)},
        [artifact.name],
    )  # fmt: skip
    assert loads == {"r.rknn": True}  # the --isolated artifact is a .rknn the toolkit reads
    actual = np.concatenate([outputs["x0"], outputs["x1"]])
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    assert_matches(actual, expected, rel=2e-2)  # float16 in the NPU's simulator
    assert np.abs(actual - expected).max() > 0  # float16 for real, not a float32 copy


def test_int8_calibrated_on_images_is_verified_on_held_out_samples(
    cli, workdir, make_checkpoint, rknn_image, no_leftovers
):
    ckpt = make_checkpoint("test_resnet", num_classes=10)
    images = write_images(workdir.parent / "rknn-calibration", 80, size=(48, 32))
    args = ["export", "rknn", "test_resnet", "--num-classes", 10, "--input-size", 3, 32, 48,
            "--target-platform", "rk3566", "--mode", "int8"]  # fmt: skip
    result = cli(*args, "-c", ckpt, "--calibration-data", images, "-o", "out/q.rknn", "--isolated")
    assert result.code == 0, result.err
    artifact = workdir / "out/q.rknn"
    verification = assert_report_lists_the_files(artifact)["verification"]
    assert verification["status"] == "passed"
    assert verification["inputs"] == "held-out calibration samples (16)"  # top-1 required
    assert verification["min_top1"] == 0.8
    assert all(check["top1_agreement"] >= 0.8 for check in verification["checks"])
    assert verification["details"]["mode"] == "int8"
    assert verification["details"]["calibration_batches"] == 64

    from timm.models import get_pretrained_cfg_value

    pixels = torch.rand(12, 3, 32, 48, generator=torch.Generator().manual_seed(8))
    mean, std = (
        torch.tensor(get_pretrained_cfg_value("test_resnet", key)).view(1, 3, 1, 1)
        for key in ("mean", "std")
    )
    x = (pixels - mean) / std  # like the calibration images, as the image loader gives them
    folder = _stage(artifact, ckpt, {"images": images})
    outputs, loads = run_rknn(
        folder, [*args, "-c", "model.pth", "--calibration-data", "images"],
        {f"x{i}": s[None].numpy() for i, s in enumerate(x)}, [artifact.name],
    )  # fmt: skip
    assert loads == {"q.rknn": True}
    actual = np.concatenate([outputs[f"x{i}"] for i in range(len(x))])
    with torch.no_grad():
        expected = reference_model("test_resnet", ckpt, num_classes=10)(x).numpy()
    rel = float(np.abs(actual - expected).max() / np.abs(expected).max())
    assert 1e-3 < rel < 0.15, rel  # quantized for real, yet close
    assert np.mean(actual.argmax(-1) == expected.argmax(-1)) >= 0.75
    assert json.loads((artifact.parent / "q.rknn.json").read_text())["job"]["options"] == {
        "calibration_mean": None, "calibration_std": None, "target_platform": "rk3566",
        "mode": "int8", "per_channel": True, "opset": 17,
    }  # fmt: skip
