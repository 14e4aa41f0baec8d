"""A host with only the core install (typer, rich, pydantic, docker) exports with --isolated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.isolated

REPO = Path(__file__).resolve().parents[2]


def test_core_install_exports_in_the_image(tmp_path: Path, images, make_checkpoint, no_leftovers):
    venv = tmp_path / "venv"
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

    work = tmp_path / "work"
    work.mkdir()
    ckpt = make_checkpoint("resnet18")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [
            str(venv / "bin" / "timmx"),
            "export",
            "onnx",
            "resnet18",
            "-c",
            str(ckpt),
            "--input-size",
            "3",
            "64",
            "64",
            "-o",
            "m.onnx",
            "--isolated",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
