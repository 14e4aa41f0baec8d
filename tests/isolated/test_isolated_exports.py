"""Isolated exports: verified in the image, numerically the same as in-process exports."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import OWNERS, TIMMX
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "64", "64")
CASES = [
    ("onnx", ".onnx", "onnx"),
    ("torch-export", ".pt2", "torch"),
    ("torchscript", ".pt", "torch"),
]


def _outputs(path: Path, x):
    import numpy as np
    import torch

    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return session.run(None, {name: x.numpy().astype(np.float32)})[0]
    module = torch.export.load(path).module() if path.suffix == ".pt2" else torch.jit.load(path)
    with torch.no_grad():
        return module(x).numpy()


@pytest.mark.parametrize(("backend", "suffix", "toolchain"), CASES)
def test_isolated_matches_in_process(
    backend, suffix, toolchain, cli, workdir, make_checkpoint, images, no_leftovers
):
    import torch

    ckpt = make_checkpoint("resnet18")
    local = cli("export", backend, "resnet18", "-c", ckpt, *SIZE, "-o", f"local/m{suffix}")
    assert local.code == 0, local.err
    isolated = cli(
        "export", backend, "resnet18", "-c", ckpt, *SIZE, "-o", f"iso/m{suffix}", "--isolated"
    )
    assert isolated.code == 0, isolated.err

    artifact = workdir / "iso" / f"m{suffix}"
    report = isolated.report(artifact)
    assert report["status"] == "success"
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith(f"timmx-{toolchain}:")
    assert report["environment"]["image_id"].startswith("sha256:")
    assert report["verification"]["status"] == "passed"
    assert report["job"]["model"]["checkpoint"] == str(ckpt)  # the host's paths, as in-process
    assert report["job"]["output"] == f"iso/m{suffix}"
    local_report = local.report(workdir / "local" / f"m{suffix}")
    assert report["model"] == local_report["model"]
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == [f"m{suffix}", f"m{suffix}.json"]
    assert artifact.stat().st_uid == os.getuid() and artifact.stat().st_gid == os.getgid()
    assert_report_lists_the_files(artifact)  # the host's record, rehashed here

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = _outputs(artifact, x)
    assert_matches(ours, _outputs(workdir / "local" / f"m{suffix}", x), rel=1e-5)
    with torch.no_grad():
        assert_matches(ours, reference_model("resnet18", ckpt)(x).numpy())


def _image_id(client, toolchain: str) -> str:
    listed = subprocess.run(
        [*TIMMX, "images", "list", "--json", toolchain], capture_output=True, text=True, check=True
    )
    (row,) = [r for r in json.loads(listed.stdout) if r["status"] == "present"]
    return client.images.get(row["image"]).id


def test_images_list_and_noop_build(images, docker_client):
    names = ["onnx", "torch"]
    subprocess.run([*TIMMX, "images", "build", *names], capture_output=True, check=True)
    ids = {name: _image_id(docker_client, name) for name in names}
    noop = subprocess.run(
        [*TIMMX, "images", "build", *names], capture_output=True, text=True, check=True
    )
    # Unchanged inputs: nothing built (the same images, no build step), whatever the time.
    assert noop.stderr.count("up to date") == 2, noop.stderr
    assert "building" not in noop.stderr and "Step " not in noop.stderr, noop.stderr
    assert {name: _image_id(docker_client, name) for name in names} == ids

    listed = subprocess.run(
        [*TIMMX, "images", "list", "--json", *names], capture_output=True, text=True, check=True
    )
    rows = {r["name"]: r for r in json.loads(listed.stdout) if r["status"] != "stale"}
    assert rows["onnx"]["status"] == rows["torch"]["status"] == "present"
    assert rows["onnx"]["size"] > 0


def test_error_inside_the_container_is_one_line(cli, workdir, images, no_leftovers):
    bad = workdir / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = cli("export", "onnx", "resnet18", "-c", bad, *SIZE, "-o", "m.onnx", "--isolated")
    assert result.code == 2
    error = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and str(bad) in error[0] and "in/checkpoint" not in error[0], result.err
    assert sorted(p.name for p in workdir.iterdir()) == ["bad.pth"]


def test_two_concurrent_isolated_exports(workdir, make_checkpoint, images, no_leftovers):
    """Two containers at once into one folder (one destination too): each publishes whole."""
    import torch

    ckpt = make_checkpoint("resnet18")
    argv = [*TIMMX, "export", "onnx", "resnet18", "-c", str(ckpt), *SIZE, "--isolated"]
    outputs = ["out/a.onnx", "out/same.onnx", "out/same.onnx"]
    procs = [
        subprocess.Popen([*argv, "-o", out], cwd=workdir, stderr=subprocess.PIPE, text=True)
        for out in outputs
    ]
    OWNERS.update(proc.pid for proc in procs)
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt)(x).numpy()
    for name in ("a.onnx", "same.onnx"):
        assert_matches(_outputs(workdir / "out" / name, x), expected)
        assert_report_lists_the_files(workdir / "out" / name)
    names = sorted(p.name for p in (workdir / "out").iterdir())
    assert names == ["a.onnx", "a.onnx.json", "same.onnx", "same.onnx.json"]
