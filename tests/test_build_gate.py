"""`timmx build --check` cannot be talked round, and a build file is checked whole before
anything runs: folder artifacts with an extra file, emptied or foreign manifest entries, a
report that disagrees, ids that would escape the output, and an output folder beside the
project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.builds import copy_project, run_build
from tests.conftest import assert_matches, reference_model
from tests.test_errors import assert_refused
from tests.test_export_onnx import run_onnx

BUILD = """
[build]
output = "dist"

[defaults]
input-size = [3, 32, 32]
num-classes = 10

[[models]]
name = "resnet18"
checkpoint = "ckpt/r.pth"

[[targets]]
backend = "ncnn"

[[targets]]
backend = "onnx"
"""
ARTIFACT = "dist/resnet18/ncnn/resnet18.ncnn"


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_checkpoint) -> Path:
    """One real build (ncnn's folder artifact and an ONNX file), copied per test."""
    root = tmp_path_factory.mktemp("gate")
    (root / "ckpt").mkdir()
    (root / "ckpt/r.pth").write_bytes(make_checkpoint("resnet18", num_classes=10).read_bytes())
    (root / "timmx.toml").write_text(BUILD)
    return run_build(root)


@pytest.fixture
def project(built, workdir) -> Path:
    return copy_project(built, workdir)


def manifest_file(root: Path) -> Path:
    return root / "dist/timmx-build.json"


def edit_manifest(root: Path, job: str, **changes) -> None:
    data = json.loads(manifest_file(root).read_text())
    data["jobs"][job].update(changes)
    manifest_file(root).write_text(json.dumps(data))


def test_a_fresh_build_passes_the_gate(cli, project):
    result = cli("build", "--check")
    assert result.code == 0, result.err
    assert "all 2 artifacts are up to date" in result.err


def test_an_extra_file_in_a_folder_artifact_is_altered(cli, project):
    """`model_ncnn.py`'s neighbour would be imported on the consumer's machine."""
    (project / ARTIFACT / "ncnn.py").write_text("import os\n")
    assert_refused(cli("build", "--check"), "resnet18/ncnn altered")


def test_an_emptied_entry_with_its_artifact_gone_is_missing(cli, project):
    edit_manifest(project, "resnet18/onnx", artifacts=[])
    (project / "dist/resnet18/onnx/resnet18.onnx").unlink()
    assert_refused(cli("build", "--check"), "resnet18/onnx missing")


def test_an_emptied_entry_is_missing_even_with_the_file_there(cli, project):
    edit_manifest(project, "resnet18/onnx", artifacts=[])
    assert_refused(cli("build", "--check"), "resnet18/onnx missing")


def test_an_entry_that_lists_other_files_is_missing(cli, project):
    """An entry that vouches for a side file only says nothing of the artifact."""
    entry = json.loads(manifest_file(project).read_text())["jobs"]["resnet18/onnx"]
    (project / "dist/resnet18/onnx/other.bin").write_bytes(b"x")
    other = {
        "path": "other.bin",
        "bytes": 1,
        "sha256": __import__("hashlib").sha256(b"x").hexdigest(),
    }
    assert entry["artifacts"][0]["path"] == "resnet18.onnx"
    edit_manifest(project, "resnet18/onnx", artifacts=[other])
    (project / "dist/resnet18/onnx/resnet18.onnx").unlink()
    assert_refused(cli("build", "--check"), "resnet18/onnx missing")


@pytest.mark.parametrize(
    ("change", "state"),
    [
        ({"backend": "torchscript"}, "stale"),
        ({"artifact": "dist/resnet18/onnx/other.onnx"}, "stale"),
        (
            {"artifacts": [{"path": "../../../timmx.toml", "bytes": 1, "sha256": "0" * 64}]},
            "missing",
        ),
    ],
)
def test_an_entry_unlike_the_plan_is_not_fresh(cli, project, change, state):
    edit_manifest(project, "resnet18/onnx", **change)
    assert_refused(cli("build", "--check"), f"resnet18/onnx {state}")


def test_a_report_that_disagrees_or_is_gone_fails_the_gate(cli, project):
    report = project / "dist/resnet18/onnx/resnet18.onnx.json"
    data = json.loads(report.read_text())
    data["artifacts"][0]["sha256"] = "0" * 64
    report.write_text(json.dumps(data))
    assert_refused(cli("build", "--check"), "resnet18/onnx altered")
    report.unlink()
    assert_refused(cli("build", "--check"), "resnet18/onnx missing")
    assert cli("build").code == 0  # a build mends it
    assert cli("build", "--check").code == 0


def test_a_manifest_that_claims_a_verification_its_report_lacks_fails(cli, project):
    """An unverified artifact made to look verified by editing the manifest alone."""
    report = project / "dist/resnet18/onnx/resnet18.onnx.json"
    data = json.loads(report.read_text())
    data["verification"] = {"status": "skipped", "note": "--no-verify"}
    report.write_text(json.dumps(data))
    assert_refused(cli("build", "--check"), "resnet18/onnx altered")


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (('name = "resnet18"', 'name = "resnet18"\nid = "../../escape"'), ["id '../../escape'"]),
        (('name = "resnet18"', 'name = "resnet18"\nid = "a/b"'), ["id 'a/b'", "plain name"]),
        (('backend = "onnx"', 'backend = "onnx"\nname = "b/c"'), ["name 'b/c'"]),
        (('backend = "onnx"', 'backend = "onnx"\nname = ".."'), ["name '..'"]),
        (
            ('checkpoint = "ckpt/r.pth"', 'checkpoint = "ckpt/gone.pth"'),
            ["resnet18/ncnn", "gone.pth"],
        ),
    ],
)
def test_a_bad_plan_is_refused_at_dry_run(cli, workdir, make_checkpoint, change, needles):
    (workdir / "ckpt").mkdir()
    (workdir / "ckpt/r.pth").write_bytes(make_checkpoint("resnet18", num_classes=10).read_bytes())
    (workdir / "timmx.toml").write_text(BUILD.replace(*change, 1))
    assert_refused(cli("build", "--dry-run"), *needles)
    assert sorted(p.name for p in workdir.iterdir()) == ["ckpt", "timmx.toml"]


def test_an_output_folder_beside_the_project(cli, workdir, make_checkpoint):
    """`output = "../dist"`, as monorepos lay it out: planned, built, checked."""
    project = workdir / "project"
    (project / "ckpt").mkdir(parents=True)
    ckpt = make_checkpoint("resnet18", num_classes=10)
    (project / "ckpt/r.pth").write_bytes(ckpt.read_bytes())
    (project / "timmx.toml").write_text(
        BUILD.replace('output = "dist"', 'output = "../dist"').replace(
            '[[targets]]\nbackend = "ncnn"\n', ""
        )
    )
    plan = cli("build", project / "timmx.toml", "--dry-run")
    assert plan.code == 0 and "1 jobs" in plan.out and "new" in plan.out
    result = cli("build", project / "timmx.toml")
    assert result.code == 0, result.err + result.out
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_onnx(workdir / "dist/resnet18/onnx/resnet18.onnx", x.numpy()), expected)
    assert cli("build", project / "timmx.toml", "--check").code == 0
