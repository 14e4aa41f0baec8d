"""Leftovers of killed exports: staging folders (their owner recorded) and export containers
(their owner's pid in a label) are removed once the owner is gone, and only then."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from timmx.cleanup import OWNER_FILE, looks_like_staging, process_start
from timmx.output import staging_folder
from timmx.runners.docker import RUN_LABEL

IMAGE = "timmx-base:bookworm"

# A process that opens a staging folder for DEST, says where, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from timmx.output import staging_folder
with staging_folder(Path(sys.argv[1])) as folder:
    print(folder, flush=True)
    time.sleep(600)
"""


def killed_holder(destination: Path) -> Path:
    """The staging folder of `destination` that a process killed with SIGKILL left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(destination)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline().strip()  # printed once the folder exists
        assert line, "the holder ended before opening its staging folder"
        folder = Path(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: its pid names no process any more
    assert folder.is_dir() and (folder / OWNER_FILE).is_file()
    return folder


def fake_staging(parent: Path, **owner: object) -> Path:
    """A staging folder whose owner.json says what the test wants."""
    folder = parent / ".m.onnx.abcd1234"
    folder.mkdir(parents=True)
    record = {"kind": "timmx-staging", "boot_id": None, "start": None, **owner}
    (folder / OWNER_FILE).write_text(json.dumps(record))
    return folder


def test_clean_removes_a_killed_owners_staging_folder_only(tmp_path: Path, cli) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = killed_holder(out / "m.onnx")
    assert looks_like_staging(dead.name)
    with staging_folder(out / "other.onnx") as live:  # this process: alive
        listed = cli("clean", "--no-containers", "--dry-run", str(tmp_path))
        assert listed.code == 0
        assert dead.name in listed.out and "would remove" in listed.out
        assert dead.is_dir()

        done = cli("clean", "--no-containers", str(tmp_path))
        assert done.code == 0, done.err
        assert not dead.exists()
        assert live.is_dir()
        assert f"removed staging folder {dead}" in done.out
    assert cli("clean", "--no-containers", str(tmp_path)).out.strip() == "nothing to clean"


def test_a_new_export_removes_its_destinations_leftovers(tmp_path: Path) -> None:
    destination = tmp_path / "m.onnx"
    dead = killed_holder(destination)
    with staging_folder(tmp_path / "m.onnx") as first:
        assert not dead.exists()
        with staging_folder(destination) as second:  # a live sibling is never touched
            assert first.is_dir() and second != first
    assert sorted(tmp_path.iterdir()) == []


def test_a_reused_pid_or_another_host_decides_right(tmp_path: Path, cli) -> None:
    import socket

    here = socket.gethostname()
    pid = os.getpid()
    start = process_start(pid)
    assert start is not None
    reused = fake_staging(tmp_path / "reused", pid=pid, hostname=here, start=start - 1)
    mine = fake_staging(tmp_path / "mine", pid=pid, hostname=here, start=start)
    remote = fake_staging(tmp_path / "remote", pid=2**22 + 1, hostname=f"not-{here}")
    unowned = tmp_path / "unowned" / ".m.onnx.abcd1234"
    unowned.mkdir(parents=True)
    skipped = fake_staging(tmp_path / "node_modules", pid=2**22 + 1, hostname=here)

    done = cli("clean", "--no-containers", str(tmp_path))
    assert done.code == 0, done.err
    assert not reused.exists()  # the pid is alive, but it is another process now
    assert mine.is_dir() and remote.is_dir() and unowned.is_dir() and skipped.is_dir()


def test_clean_refuses_a_missing_folder_in_one_line(tmp_path: Path, cli) -> None:
    done = cli("clean", "--no-containers", str(tmp_path / "nope"))
    assert done.code == 2
    assert done.err.strip().count("\n") == 0 and "does not exist" in done.err


@pytest.fixture
def docker_client():
    """A reachable engine; without one, skip, except in CI (as tests/isolated/conftest.py)."""
    try:
        from timmx.images.engine import connect

        client = connect()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a Docker engine for the container cleanup test: {exc}")
        pytest.skip(f"no Docker engine: {exc}")
    yield client
    client.close()


def any_image(client) -> str:
    """An image to create (never start) containers from: the base image, or any present."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(IMAGE).id
    except ImageNotFound:
        images = client.images.list()
    if not images:
        reason = "no image to create a container from: make one with `timmx images base`"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return images[0].id


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.mark.isolated
def test_clean_removes_containers_whose_cli_is_gone(
    docker_client, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from docker.errors import NotFound

    image = any_image(docker_client)
    made = []
    try:
        for pid in (dead_pid(), os.getpid()):
            made.append(
                docker_client.containers.create(
                    image,
                    command=["true"],
                    name=f"timmx-clean-test-{uuid.uuid4().hex[:8]}",
                    labels={RUN_LABEL: str(pid)},
                )
            )
        gone, live = made
        monkeypatch.chdir(tmp_path)
        done = cli("clean")
        assert done.code == 0, done.err
        assert f"removed container {gone.name}" in done.out
        with pytest.raises(NotFound):
            docker_client.containers.get(gone.id)
        docker_client.containers.get(live.id)  # its owner, this process, is alive
        assert live.name not in done.out
    finally:
        for container in made:
            with suppress(NotFound):
                container.remove(force=True)
