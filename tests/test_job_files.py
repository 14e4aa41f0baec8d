"""The files a job reads, known by the job itself (`ExportJob.input_files` / `with_paths`), and
what is built on them: container staging, the existence check, Ray's shipping and the cache
key, which changes when any input file changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from timmx.build.cache import job_key
from timmx.build.plan import PlannedJob
from timmx.contract import CalibrationSpec, ExportJob, ModelSpec, check_paths_inside
from timmx.errors import CheckpointError, ContractError, InvalidInputError
from timmx.runners.container_job import check_input_files, rewrite_job
from timmx.runners.remote import pack
from timmx.runners.spec import LocalSpec


def coreml_job(**changes) -> ExportJob:
    """A Core ML job reading every kind of input: a checkpoint, a calibration folder and a
    file-typed option (`labels`)."""
    job = ExportJob(
        backend="coreml",
        model=ModelSpec(name="resnet18", checkpoint="ckpt/r18.pth"),
        calibration=CalibrationSpec(path="images"),
        options={"labels": "labels.txt", "precision": "fp32"},
        output="dist/r18.mlpackage",
    )
    return job.model_copy(update=changes)


def test_input_files_names_every_slot():
    assert coreml_job().input_files() == {
        "checkpoint": "ckpt/r18.pth",
        "calibration": "images",
        "option-labels": "labels.txt",
    }


def test_a_job_without_files_lists_none():
    job = coreml_job(
        model=ModelSpec(name="resnet18", pretrained=True),
        calibration=CalibrationSpec(random=True),  # calibration without data: no file
        options={},
    )
    assert job.input_files() == {}


def test_with_paths_moves_each_file_and_leaves_the_job_as_it_was():
    job = coreml_job()
    before = job.model_dump()
    moved = job.with_paths(
        {
            "checkpoint": "in/0/r18.pth",
            "calibration": "in/1/images",
            "option-labels": "in/2/labels.txt",
            "output": "out/r18.mlpackage",
        }
    )
    assert moved.input_files() == {
        "checkpoint": "in/0/r18.pth",
        "calibration": "in/1/images",
        "option-labels": "in/2/labels.txt",
    }
    assert moved.output == "out/r18.mlpackage"
    assert moved.options["precision"] == "fp32"  # the other options stay
    assert job.model_dump() == before


def test_with_paths_refuses_a_file_the_job_does_not_have():
    with pytest.raises(ValueError, match="option-mean"):
        coreml_job().with_paths({"option-mean": "x"})


def test_a_container_sees_every_input_under_its_slot():
    staged = rewrite_job(coreml_job(), lambda path, slot: f"in/{slot}/{Path(path).name}", "out/m")
    assert staged.input_files() == {
        "checkpoint": "in/checkpoint/r18.pth",
        "calibration": "in/calibration/images",
        "option-labels": "in/option-labels/labels.txt",
    }
    assert staged.output == "out/m"


@pytest.mark.parametrize(
    ("missing", "error", "needle"),
    [
        ("ckpt/r18.pth", CheckpointError, "checkpoint not found"),
        ("images", InvalidInputError, "calibration data not found"),
        ("labels.txt", InvalidInputError, "--labels file not found"),
    ],
)
def test_a_missing_input_is_named(tmp_path, missing, error, needle):
    write_inputs(tmp_path)
    target = tmp_path / missing
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(error, match=needle) as refused:
        check_input_files(coreml_job(), tmp_path)
    assert str(target) in refused.value.message


def test_a_labels_file_outside_the_job_folder_is_refused():
    with pytest.raises(ContractError, match=r"'options\.labels'"):
        check_paths_inside(coreml_job(options={"labels": "../labels.txt"}))


def test_ray_ships_inputs_outside_the_workspace_under_its_own_names():
    job = coreml_job(
        model=ModelSpec(name="resnet18", checkpoint="/models/r18.pth"),
        options={"labels": "../shared/labels.txt"},
        output="/srv/out/r18.mlpackage",
    )
    shipment = pack(job, LocalSpec(write_report=False), "local:")
    node_job = ExportJob.model_validate(shipment.spec["job"])
    assert shipment.inputs == ["../shared/labels.txt", "/models/r18.pth", "images"]
    assert shipment.spec["inputs"] == ["_inputs/0/labels.txt", "_inputs/1/r18.pth", "images"]
    assert node_job.input_files() == {
        "checkpoint": "_inputs/1/r18.pth",
        "calibration": "images",  # inside: as written, so the node's messages read the same
        "option-labels": "_inputs/0/labels.txt",
    }
    assert node_job.output == "_output/r18.mlpackage"
    check_paths_inside(node_job)  # the node's job stays inside its workspace


def write_inputs(root: Path) -> None:
    (root / "ckpt").mkdir()
    (root / "ckpt" / "r18.pth").write_bytes(b"weights")
    (root / "images" / "cat").mkdir(parents=True)
    (root / "images" / "cat" / "1.png").write_bytes(b"png one")
    (root / "labels.txt").write_text("cat\ndog\n")


def planned(job: ExportJob) -> PlannedJob:
    return PlannedJob("r18", "coreml", job, isolated=False, memory="8g", timeout_s=600, build=False)


# Each change has another size than the file it replaces: the key's file hashes are remembered
# per (path, size, mtime), and two writes may share an mtime on a coarse clock.
CHANGES = {
    "checkpoint": lambda root: (root / "ckpt" / "r18.pth").write_bytes(b"other weights"),
    "calibration image": lambda root: (root / "images" / "cat" / "1.png").write_bytes(b"png 1b"),
    "calibration image added": lambda root: (root / "images" / "cat" / "2.png").write_bytes(b"2"),
    "calibration image renamed": lambda root: (root / "images" / "cat" / "1.png").rename(
        root / "images" / "cat" / "0.png"
    ),
    "labels": lambda root: (root / "labels.txt").write_text("cat\ndog\nbird\n"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_the_cache_key_changes_with_any_input_file(tmp_path, change):
    write_inputs(tmp_path)
    job = planned(coreml_job())
    before = job_key(job, tmp_path)
    assert job_key(job, tmp_path) == before  # nothing changed: the same key
    CHANGES[change](tmp_path)
    assert job_key(job, tmp_path) != before
