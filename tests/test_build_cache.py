"""What makes a built artifact stale, at the CLI: a changed target option, calibration data,
labels file, toolchain or timmx version each make exactly the jobs that read it stale (checked
with `timmx build --check` after one real build); and `--fail-fast` stops after a failed job.
The key itself is unit-tested in tests/test_job_files.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.builds import build_file, copy_project, run_build, write_project

TARGETS = """[[targets]]
backend = "torchscript"

[[targets]]
backend = "onnx"
mode = "int8"
calibration-data = "calib.pt"

[[targets]]
backend = "coreml"
compute-precision = "float32"
labels = "labels.txt"
"""
JOBS = {"resnet18/torchscript", "resnet18/onnx", "resnet18/coreml"}


def write_calibration(path: Path, seed: int) -> None:
    torch.save(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_checkpoint) -> Path:
    """One real build of three jobs (each reading something the others do not), copied per test."""
    root = tmp_path_factory.mktemp("cache")
    write_calibration(root / "calib.pt", 1)
    (root / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    text = build_file(models=("resnet18",), targets=TARGETS)
    return run_build(write_project(root, make_checkpoint, text))


@pytest.fixture
def project(built, workdir) -> Path:
    return copy_project(built, workdir)


def not_fresh(cli) -> dict[str, str]:
    """Each job `timmx build --check` finds not up to date, with its state."""
    result = cli("build", "--check")
    if result.code == 0:
        return {}
    assert result.code == 2, result.err
    listed = re.search(r"are not up to date \((.*)\): run", " ".join(result.err.split()))
    assert listed, result.err
    return dict(item.rsplit(" ", 1) for item in listed.group(1).split(", "))


def test_a_fresh_build_is_fresh(cli, project):
    assert not_fresh(cli) == {}


def test_a_changed_target_option_makes_that_target_stale(cli, project):
    toml = project / "timmx.toml"
    toml.write_text(
        toml.read_text().replace(
            'backend = "torchscript"', 'backend = "torchscript"\nmethod = "script"'
        )
    )
    assert not_fresh(cli) == {"resnet18/torchscript": "stale"}


def test_changed_calibration_data_makes_its_readers_stale(cli, project):
    write_calibration(project / "calib.pt", 2)
    assert not_fresh(cli) == {"resnet18/onnx": "stale"}


def test_a_changed_labels_file_makes_coreml_stale(cli, project):
    (project / "labels.txt").write_text("".join(f"kind {i}\n" for i in range(10)))
    assert not_fresh(cli) == {"resnet18/coreml": "stale"}


def test_another_toolchain_makes_its_jobs_stale(cli, project, monkeypatch):
    import timmx.build.cache as cache

    real = cache.toolchain_identity

    def identity(backend: str, isolated: bool) -> str:
        found = real(backend, isolated)
        return found + ",onnxruntime=99" if backend == "onnx" else found

    monkeypatch.setattr(cache, "toolchain_identity", identity)
    assert not_fresh(cli) == {"resnet18/onnx": "stale"}


def test_another_timmx_version_makes_every_job_stale(cli, project, monkeypatch):
    import timmx

    monkeypatch.setattr(timmx, "__version__", timmx.__version__ + ".post99")
    assert not_fresh(cli) == dict.fromkeys(JOBS, "stale")


def test_fail_fast_stops_after_the_first_failure(cli, workdir, make_checkpoint):
    """The first job fails (a checkpoint of 1000 classes for 10): the rest never start."""
    (workdir / "ckpt").mkdir()
    (workdir / "ckpt/bad.pth").write_bytes(make_checkpoint("resnet18").read_bytes())
    good = make_checkpoint("mobilenetv3_small_100", num_classes=10)
    (workdir / "ckpt/m.pth").write_bytes(good.read_bytes())
    (workdir / "timmx.toml").write_text(
        "[defaults]\ninput-size = [3, 32, 32]\nnum-classes = 10\n\n"
        '[[models]]\nname = "resnet18"\ncheckpoint = "ckpt/bad.pth"\n\n'
        '[[models]]\nname = "mobilenetv3_small_100"\ncheckpoint = "ckpt/m.pth"\n\n'
        '[[targets]]\nbackend = "torchscript"\n\n[[targets]]\nbackend = "torch-export"\n'
    )
    result = cli("build", "--fail-fast", "--jobs", 1)
    assert result.code == 2
    assert "1 of 4 jobs failed (resnet18/torchscript)" in " ".join(result.err.split()), result.err
    assert result.out.count("not run") == 3, result.out
    assert not (workdir / "dist/mobilenetv3_small_100").exists()

    # --keep-going, the default, runs them all
    result = cli("build", "--jobs", 1)
    assert result.code == 2 and "2 of 4 jobs failed" in " ".join(result.err.split())
    assert "not run" not in result.out
