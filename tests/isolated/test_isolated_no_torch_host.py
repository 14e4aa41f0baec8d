"""A host with only the core install (typer, rich, pydantic, docker) exports with --isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolated.helpers import run_command

pytestmark = pytest.mark.isolated

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    """A venv with only the core install: no torch, no timm, no numpy."""
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    python = str(venv / "bin" / "python")
    for heavy in ("torch", "timm", "numpy"):
        probe = subprocess.run([python, "-c", f"import {heavy}"], capture_output=True)
        assert probe.returncode != 0, f"{heavy} is importable in the core-only venv"
    return venv


def test_core_install_exports_in_the_image(
    tmp_path: Path, core_venv, images, make_checkpoint, no_leftovers
):
    venv = core_venv
    work = tmp_path / "work"
    work.mkdir()
    ckpt = make_checkpoint("resnet18")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    args = ["export", "onnx", "resnet18", "-c", str(ckpt), "--input-size", "3", "64", "64"]
    argv = [str(venv / "bin" / "timmx"), *args, "-o", "m.onnx", "--isolated"]
    done = run_command(argv, work, env)
    assert done.returncode == 0, done.stderr
    report = json.loads((work / "m.onnx.json").read_text())
    assert report["environment"]["runner"] == "docker"
    assert report["verification"]["status"] == "passed"
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "m.onnx.json"]

    # Our own check, here where torch is: the artifact carries the checkpoint's weights.
    import torch

    from tests.conftest import assert_matches, reference_model
    from tests.test_export_onnx import run_onnx

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(21))
    expected = reference_model("resnet18", ckpt)(x).detach().numpy()
    assert_matches(run_onnx(work / "m.onnx", x.numpy()), expected)


def test_pretrained_isolated_offline_from_the_hosts_cache(
    tmp_path: Path, core_venv, images, no_leftovers
):
    """--pretrained --isolated with no torch here and no hub anywhere: the weights a Hugging
    Face cache holds (laid out by this test) are found by the image's fetch step and exported;
    the artifact carries exactly them."""
    import torch

    from tests.conftest import assert_matches
    from tests.test_export_onnx import run_onnx
    from tests.test_pretrained_offline import MODEL, UNREACHABLE, fill_cache

    model = fill_cache(tmp_path / "hf")
    work = tmp_path / "work"
    work.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HF_HUB_CACHE", "HF_HUB_OFFLINE")
    }
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=UNREACHABLE)
    args = [str(core_venv / "bin" / "timmx"), "export", "onnx", MODEL, "--pretrained"]
    args += ["--input-size", "3", "64", "64", "-o", "m.onnx", "--isolated"]
    done = run_command(args, work, env)
    assert done.returncode == 0, done.stderr
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.inference_mode():
        expected = model(x).numpy()
    assert_matches(run_onnx(work / "m.onnx", x.numpy()), expected)

    # Weights the cache does not have, with the hub out of reach: one line, nothing written.
    args[3] = "resnet18.a2_in1k"
    done = run_command(args, work, env)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "resnet18.a2_in1k" in errors[0], done.stderr
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "m.onnx.json"]
