"""The export container is hardened, and nothing of it (or of a half-written artifact) is left
behind by Ctrl-C, a kill, running out of memory or the time limit."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from tests.isolated.helpers import (
    EXPORT_STARTED,
    TIMMX,
    run_command,
    run_containers,
    spawn,
    wait_for_container,
    wait_for_log,
    wait_until_gone,
)

pytestmark = pytest.mark.isolated

EXPORT = ["export", "onnx", "resnet18", "--input-size", "3", "64", "64", "-o", "out/m.onnx"]


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _nothing_left(client, folder: Path) -> None:
    assert run_containers(client) == []
    out = folder / "out"
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_container_is_hardened(tmp_path, docker_client, images, make_checkpoint, no_leftovers):
    ckpt = make_checkpoint("resnet18")
    env = {**os.environ, "TIMMX_PIDS_LIMIT": "300"}
    proc = spawn([*EXPORT, "-c", str(ckpt), "--isolated", "--memory", "3g"], tmp_path, env=env)
    try:
        container = wait_for_container(docker_client, proc)
        container.reload()
        config, host = container.attrs["Config"], container.attrs["HostConfig"]
        assert config["User"] == f"{os.getuid()}:{os.getgid()}"
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == 3 * 1024**3
        assert host["PidsLimit"] == 300
        assert "/tmp" in host["Tmpfs"]
        mounts = {m["Destination"]: m["RW"] for m in container.attrs["Mounts"]}
        assert mounts == {
            "/job/job.json": False,
            "/job/out": True,
            f"/job/in/checkpoint/{ckpt.name}": False,
        }
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert (tmp_path / "out" / "m.onnx").stat().st_uid == os.getuid()


def test_ctrl_c_leaves_no_container_and_no_artifact(tmp_path, docker_client, images, no_leftovers):
    proc = spawn([*EXPORT, "--isolated"], tmp_path)
    wait_for_log(wait_for_container(docker_client, proc), EXPORT_STARTED)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    _nothing_left(docker_client, tmp_path)


def test_killed_container_is_one_line(tmp_path, docker_client, images, no_leftovers):
    proc = spawn([*EXPORT, "--isolated"], tmp_path)
    container = wait_for_container(docker_client, proc)
    wait_for_log(container, EXPORT_STARTED)
    container.kill()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "killed" in _one_error_line(stderr)
    _nothing_left(docker_client, tmp_path)


def test_a_killed_cli_leaves_no_container(tmp_path, docker_client, images, no_leftovers):
    """SIGKILL gives the CLI no chance to clean up: the container ends at the end of its export
    (or at its time limit, kept by the worker) and removes itself."""
    proc = spawn([*EXPORT, "--isolated"], tmp_path)
    wait_for_container(docker_client, proc)
    proc.kill()
    proc.communicate(timeout=60)
    wait_until_gone(docker_client, proc.pid)
    assert not (tmp_path / "out" / "m.onnx").exists()  # nobody published it


def test_out_of_memory_is_one_line(tmp_path, docker_client, images, no_leftovers):
    proc = spawn([*EXPORT, "--isolated", "--memory", "160m"], tmp_path)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    assert "memory" in _one_error_line(stderr).lower()
    _nothing_left(docker_client, tmp_path)


def test_timeout_stops_the_container(tmp_path, docker_client, images, no_leftovers):
    proc = spawn([*EXPORT, "--isolated", "--timeout", "2"], tmp_path)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "timed out after 2 s" in _one_error_line(stderr)
    _nothing_left(docker_client, tmp_path)


def test_runs_as_an_ordinary_user_in_the_docker_group(
    tmp_path, docker_client, images, no_leftovers
):
    """The CLI may run as root in CI: an ordinary user's artifacts must be that user's."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to become an ordinary user")
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        pytest.skip("no docker group")
    uid = gid = 1500
    # pytest's own temporary folders are private to root: use one the user can reach.
    work = Path(tempfile.mkdtemp(prefix="timmx-user-test."))
    try:
        _export_as(uid, gid, docker_gid, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _export_as(uid: int, gid: int, docker_gid: int, work: Path) -> None:
    os.chmod(work, 0o755)
    os.chown(work, uid, gid)
    env = {**os.environ, "HOME": str(work)}
    argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", f"--groups={docker_gid}", *TIMMX]
    done = run_command([*argv, *EXPORT, "--isolated"], work, env)
    assert done.returncode == 0, done.stderr
    for name in ("m.onnx", "m.onnx.json"):
        stat = (work / "out" / name).stat()
        assert (stat.st_uid, stat.st_gid) == (uid, gid)
