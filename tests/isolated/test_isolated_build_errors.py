"""Image build failures and missing images are one line that says what to do."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.isolated.helpers import TIMMX

pytestmark = pytest.mark.isolated

REPO = Path(__file__).resolve().parents[2]


def _run(args, cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TIMMX, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_build_failure_names_the_step_and_last_lines(tmp_path: Path, docker_client):
    recipe = tmp_path / "images" / "broken"
    recipe.mkdir(parents=True)
    (recipe / "Dockerfile").write_text(
        "ARG BASE_IMAGE=python:3.11-slim-bookworm\nFROM ${BASE_IMAGE}\n"
        'RUN echo "resolving pins" && echo "no such package: nope==9" && exit 3\n'
    )
    done = _run(["images", "build", "broken"], tmp_path, TIMMX_IMAGES_DIR=str(tmp_path / "images"))
    assert done.returncode == 2
    line = _error(done.stderr)
    assert "step 3/" in line and "RUN echo" in line, line
    assert "no such package: nope==9" in line and "non-zero code: 3" in line, line
    log = Path(line.rsplit("full log: ", 1)[1].rstrip(")"))
    assert "no such package" in log.read_text()
    log.unlink()


def test_no_build_fails_fast_on_a_missing_image(tmp_path: Path, docker_client):
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    lock = images / "onnx" / "requirements.lock"
    lock.write_text(lock.read_text() + "# a changed lock gives a new tag\n")
    done = _run(
        ["export", "onnx", "resnet18", "-o", "m.onnx", "--isolated", "--no-build"],
        tmp_path,
        TIMMX_IMAGES_DIR=str(images),
    )
    assert done.returncode == 2
    line = _error(done.stderr)
    assert "is missing" in line and "timmx images build onnx" in line, line
    assert not (tmp_path / "m.onnx").exists()
