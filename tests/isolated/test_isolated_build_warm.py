"""`timmx build` runs isolated jobs in warm containers: one per toolchain serves many jobs, a
container that dies or times out fails only its job, and neither Ctrl-C nor a killed host leaves
a container or a staging folder behind."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import (
    OWNERS,
    RUN_LABEL,
    containers_of,
    owner_pid,
    spawn,
    wait_for_container,
    wait_until_gone,
)
from tests.report_files import assert_report_lists_the_files
from tests.test_export_onnx import run_onnx

pytestmark = pytest.mark.isolated

MODELS = ("resnet18", "mobilenetv3_small_100")


def _project(folder: Path, make_checkpoint, extra: str = "") -> Path:
    (folder / "ckpt").mkdir()
    models = ""
    for name in MODELS:
        (folder / "ckpt" / f"{name}.pth").write_bytes(make_checkpoint(name).read_bytes())
        models += f'[[models]]\nname = "{name}"\ncheckpoint = "ckpt/{name}.pth"\n\n'
    (folder / "timmx.toml").write_text(
        f"""[defaults]
input-size = [3, 64, 64]
isolated = true
{extra}
{models}
[[targets]]
backend = "onnx"

[[targets]]
backend = "torchscript"
"""
    )
    return folder


def _hidden(folder: Path) -> list[Path]:
    """Staging and exchange folders left anywhere in the output."""
    return [p for p in (folder / "dist").rglob(".*")] if (folder / "dist").exists() else []


def _containers_created(client, pid: int, since: int) -> int:
    events = client.api.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"event": "create", "label": RUN_LABEL},
        decode=True,
    )
    return sum(1 for event in events if owner_pid(event["Actor"]["Attributes"]) == pid)


def test_one_warm_container_per_toolchain_serves_the_jobs(
    tmp_path, docker_client, images, make_checkpoint, no_leftovers
):
    project = _project(tmp_path, make_checkpoint)
    since = int(time.time()) - 1
    proc = spawn(["build", "--jobs", "1"], project)
    OWNERS.add(proc.pid)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    # two toolchains (onnx, torch), four jobs: two containers, each serving two jobs
    assert _containers_created(docker_client, proc.pid, since) == 2
    jobs = json.loads((project / "dist/timmx-build.json").read_text())["jobs"]
    assert sorted(jobs) == sorted(f"{m}/{t}" for m in MODELS for t in ("onnx", "torchscript"))
    assert all(j["image"] and j["image_id"] for j in jobs.values())
    assert _hidden(project) == []

    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for name in MODELS:
        expected = reference_model(name, project / "ckpt" / f"{name}.pth")(x).detach().numpy()
        assert_matches(run_onnx(project / f"dist/{name}/onnx/{name}.onnx", x.numpy()), expected)
        scripted = torch.jit.load(str(project / f"dist/{name}/torchscript/{name}.pt"))
        assert_matches(scripted(x).detach().numpy(), expected)
        report = assert_report_lists_the_files(project / f"dist/{name}/onnx/{name}.onnx")
        assert report["environment"]["runner"] == "docker"


def test_a_job_past_its_time_limit_fails_alone(
    tmp_path, docker_client, images, make_checkpoint, no_leftovers
):
    """Each job runs out of its 1 s (importing torch takes longer): each fails with one line, in
    a container of its own, and nothing is left."""
    project = _project(tmp_path, make_checkpoint, extra="timeout = 1")
    proc = spawn(["build", "--jobs", "1"], project)
    OWNERS.add(proc.pid)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    assert "4 of 4 jobs failed" in err and "Traceback" not in err
    report = json.loads((project / "dist/timmx-build.json").read_text())
    assert report["jobs"] == {}
    assert _hidden(project) == []
    assert not list((project / "dist").rglob("*.onnx")) and not list(project.rglob("*.pt"))


def test_ctrl_c_removes_the_warm_containers_and_their_folders(
    tmp_path, docker_client, images, make_checkpoint, no_leftovers
):
    project = _project(tmp_path, make_checkpoint)
    proc = spawn(["build", "--jobs", "1"], project)
    OWNERS.add(proc.pid)
    wait_for_container(docker_client, proc)
    deadline = time.monotonic() + 300
    while not list((project / "dist").glob(".timmx-work-*/work/*/out/.*")):  # an export under way
        if time.monotonic() > deadline or proc.poll() is not None:  # a hang guard
            pytest.fail("no export got under way")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert _hidden(project) == []
    assert containers_of(docker_client, proc.pid) == []


def test_a_killed_host_leaves_no_container(
    tmp_path, docker_client, images, make_checkpoint, no_leftovers
):
    """SIGKILL gives the host no chance to clean up: the container's stdin closes with the
    host's attachment, its worker ends after the job at hand, and the container removes
    itself."""
    project = _project(tmp_path, make_checkpoint)
    proc = spawn(["build", "--jobs", "1"], project)
    OWNERS.add(proc.pid)
    wait_for_container(docker_client, proc)
    proc.kill()
    proc.communicate(timeout=60)
    wait_until_gone(docker_client, proc.pid)
