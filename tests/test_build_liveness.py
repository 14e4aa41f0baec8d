"""`timmx build` under concurrency and failure: one build per output folder at a time, a dead
warm worker replaced, the build file's `timeout` kept for in-process jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builds import ONNX, build_file, write_project
from tests.test_errors import assert_refused
from timmx.build.execute import Executor, Outcome
from timmx.build.lock import LOCK_NAME
from timmx.build.run import load_build
from timmx.time_limit import timed_out_message

BUILD = build_file(models=("resnet18",), targets=ONNX)
MORE_TARGETS = """
[[targets]]
backend = "torch-export"

[[targets]]
backend = "onnx"
name = "onnx-dynamic"
dynamic-batch = true
"""
# Holds the build lock of the folder argv[1] until its stdin closes, as a running build does.
HOLD_LOCK = """
import sys
from pathlib import Path
from timmx.build.lock import build_lock
with build_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def project(workdir, make_checkpoint) -> Path:
    return write_project(workdir, make_checkpoint, BUILD)


def files(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file() and p.name != LOCK_NAME
    }


def hold_lock(output: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(output)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"  # it holds the lock now
    return holder


def test_a_second_build_into_the_same_output_is_refused(cli, project):
    assert cli("build").code == 0
    dist = project / "dist"
    before = files(dist)
    (project / "other.toml").write_text(
        BUILD.replace('backend = "onnx"', 'backend = "torchscript"')
    )
    holder = hold_lock(dist)  # the first build, still writing
    try:
        result = cli("build", "other.toml")
        assert_refused(
            result,
            f"another timmx build is writing {dist} (pid {holder.pid}, lock {LOCK_NAME})",
            "wait for it to end, or set another [build] output",
        )
        assert files(dist) == before  # the manifest and the artifacts: untouched
        assert not (dist / "resnet18/torchscript").exists()
    finally:
        holder.communicate("")
    assert holder.returncode == 0 and not (dist / LOCK_NAME).exists()
    assert cli("build", "--check").code == 0


def test_a_lock_left_by_a_killed_build_does_not_block_the_next(cli, project):
    dist = project / "dist"
    holder = hold_lock(dist)
    holder.send_signal(signal.SIGKILL)  # no finally: the lock file stays, the kernel's lock not
    holder.communicate()
    assert (dist / LOCK_NAME).read_text() == f"{holder.pid}\n"
    result = cli("build")
    assert result.code == 0, result.err
    assert (dist / "resnet18/onnx/resnet18.onnx").is_file()
    assert not (dist / LOCK_NAME).exists()


def test_a_file_of_the_locks_name_that_timmx_did_not_write_is_kept(cli, project):
    dist = project / "dist"
    dist.mkdir()
    (dist / LOCK_NAME).write_text("my notes\n")
    assert_refused(cli("build"), f"{dist / LOCK_NAME} is not a timmx build lock", "move it away")
    assert (dist / LOCK_NAME).read_text() == "my notes\n"  # neither rewritten nor removed
    assert not (dist / "resnet18").exists()


def test_a_build_refused_under_the_lock_leaves_no_output_folder(cli, project):
    # --locked with no manifest yet: refused after the lock is taken (the manifest is read
    # under it), before anything is written.
    (project / "timmx.toml").write_text(BUILD + "isolated = true\n")
    assert_refused(cli("build", "--locked"), "--locked")
    assert not (project / "dist").exists()


def run_jobs(root: Path, executor: Executor | None = None, on_progress=None) -> list[Outcome]:
    """The build file's jobs, one at a time (one slot, one warm worker at a time)."""
    build = load_build(root / "timmx.toml")
    executor = executor or Executor(build.root, slots=1)
    return executor.run(
        [job.planned for job in build.jobs],
        lambda planned: None,
        on_progress or (lambda planned, message: None),
        lambda outcome: None,
    )


def serving_workers(root: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", f"timmx.worker --serve {root}"], capture_output=True, text=True
    )
    return found.stdout.splitlines()


def test_a_killed_warm_worker_fails_only_its_job(project):
    (project / "timmx.toml").write_text(BUILD + MORE_TARGETS)
    killed: list[int] = []

    def kill_the_worker_once(planned, message: str) -> None:
        if not killed:  # the first job is under way in the slot's one worker
            (runners,) = executor._pools
            (worker,) = runners.processes
            killed.append(worker.process.pid)
            os.kill(worker.process.pid, signal.SIGKILL)

    executor = Executor(project.resolve(), slots=1)
    outcomes = run_jobs(project, executor, kill_the_worker_once)
    by_id = {o.planned.id: o for o in outcomes}
    assert list(by_id) == ["resnet18/onnx", "resnet18/torch-export", "resnet18/onnx-dynamic"]
    failed = by_id["resnet18/onnx"].error
    assert failed is not None and "\n" not in failed.message
    assert failed.message.startswith("the worker process was killed (signal 9) during this job")
    for job_id in ("resnet18/torch-export", "resnet18/onnx-dynamic"):  # a fresh worker ran them
        assert by_id[job_id].error is None, by_id[job_id].error
        assert (project / by_id[job_id].planned.job.output).is_file()
    dist = project / "dist"
    assert not (dist / "resnet18/onnx").exists() or list((dist / "resnet18/onnx").iterdir()) == []
    assert [p for p in dist.rglob(".*")] == []  # the killed worker's staging folder is gone
    assert serving_workers(project) == []


def test_an_in_process_job_past_its_timeout_is_stopped_and_the_next_runs(project):
    # convnext_base at its 224 x 224 takes far longer than 1 s to build and export anywhere.
    # It comes first: the job after it needs a fresh worker in the same slot.
    slow = '[[models]]\nname = "convnext_base"\ninput-size = [3, 224, 224]\ntimeout = 1\n\n'
    (project / "timmx.toml").write_text(BUILD.replace("[[models]]", slow + "[[models]]", 1))
    outcomes = run_jobs(project)
    by_id = {o.planned.id: o for o in outcomes}
    assert list(by_id) == ["convnext_base/onnx", "resnet18/onnx"]
    stopped = by_id["convnext_base/onnx"].error
    assert stopped is not None and stopped.message == timed_out_message("onnx", 1)
    assert by_id["resnet18/onnx"].error is None
    assert (project / "dist/resnet18/onnx/resnet18.onnx").is_file()
    assert (
        not (project / "dist/convnext_base").exists()
        or [p for p in (project / "dist/convnext_base").rglob("*") if p.is_file()] == []
    )
    assert [p for p in (project / "dist").rglob(".*")] == []
    assert serving_workers(project) == []


def test_a_timeout_under_one_second_is_refused_at_dry_run(cli, project):
    (project / "timmx.toml").write_text(BUILD.replace("[defaults]", "[defaults]\ntimeout = 0"))
    assert_refused(
        cli("build", "--dry-run"),
        "models[0] (resnet18) x onnx: 'timeout' must be at least 1 second, got 0",
    )
    assert not (project / "dist").exists()
