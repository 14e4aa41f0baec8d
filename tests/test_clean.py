"""Leftovers of killed exports and builds: staging and exchange folders (their owner recorded)
and export containers (their run id and owner in labels) are removed once the owner is provably
gone, and only then: an owner in another pid namespace or on another host is kept."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from contextlib import suppress
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests.conftest import unavailable
from timmx.cleanup import (
    OWNER_FILE,
    OWNER_LABEL,
    Owner,
    container_labels,
    looks_like_exchange,
    looks_like_staging,
    process_start,
    run_id,
)
from timmx.publish import staging_folder
from timmx.runners.docker import RUN_LABEL

IMAGE = "timmx-base:bookworm"

# A process that opens a staging folder for DEST, says where, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from timmx.publish import staging_folder
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
    here = Owner.current().pidns  # the namespace its pid means a process in
    record = {"kind": "timmx-staging", "boot_id": None, "start": None, "pidns": here, **owner}
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
    # a CLI in a container sharing this host's name: its pid means nothing here
    other_ns = fake_staging(tmp_path / "ns", pid=dead_pid(), hostname=here, pidns="pid:[1]")

    done = cli("clean", "--no-containers", str(tmp_path))
    assert done.code == 0, done.err
    assert not reused.exists()  # the pid is alive, but it is another process now
    assert mine.is_dir() and remote.is_dir() and unowned.is_dir() and skipped.is_dir()
    assert other_ns.is_dir()


def test_an_owner_in_another_pid_namespace_or_host_is_unknowable() -> None:
    here = Owner.current()
    if here.pidns is None:
        pytest.skip("no /proc/self/ns/pid here")
    assert here.is_gone() is False
    gone = replace(here, pid=dead_pid())
    assert gone.is_gone() is True
    assert replace(gone, pidns="pid:[1]").is_gone() is None  # a container's CLI: its own pids
    assert replace(here, pidns="pid:[1]").is_gone() is None  # even with a live pid here
    assert replace(gone, pidns=None).is_gone() is None  # a record that names none
    assert replace(gone, hostname=f"not-{here.hostname}").is_gone() is None
    # a restart ends every process of the host, in whatever namespace
    assert replace(gone, pidns="pid:[1]", boot_id="another-boot").is_gone() is True


# A process that opens a build's exchange folder as a build does, says where, and waits.
EXCHANGE_HOLDER = """
import sys, time
from pathlib import Path
from timmx.runners.spec import WarmContainerSpec
from timmx.runners.warm_container import WarmContainer
pool = WarmContainer(WarmContainerSpec(toolchain="onnx"))
print(pool._exchange_folder(Path(sys.argv[1]) / "dist"), flush=True)
time.sleep(600)
"""


def test_clean_removes_a_killed_builds_exchange_folder_only(tmp_path: Path, cli) -> None:
    from timmx.runners.spec import WarmContainerSpec
    from timmx.runners.warm_container import WarmContainer

    proc = subprocess.Popen(
        [sys.executable, "-c", EXCHANGE_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        seen = Path(proc.stdout.readline().strip())  # what its containers would see
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    dead = seen.parent
    assert looks_like_exchange(dead.name) and dead.parent == tmp_path / "dist"
    assert (dead / OWNER_FILE).is_file() and not (seen / OWNER_FILE).exists()  # out of reach
    (seen / "1" / "out").mkdir(parents=True)
    unowned = tmp_path / "dist" / ".timmx-work-abcd1234"
    unowned.mkdir()
    pool = WarmContainer(WarmContainerSpec(toolchain="onnx"))
    try:
        live = pool._exchange_folder(tmp_path / "dist").parent  # this process's: alive
        done = cli("clean", "--no-containers", str(tmp_path))
        assert done.code == 0, done.err
        assert f"removed exchange folder {dead}" in done.out
        assert not dead.exists()
        assert live.is_dir() and unowned.is_dir()
    finally:
        pool.close()
    assert not live.exists()


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
        unavailable(f"the container cleanup test needs a Docker engine: {exc}")
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
        unavailable(reason)
    return images[0].id


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def owner_labels(**changes: object) -> dict[str, str]:
    """Export container labels of another run, whose owner record says what the test wants."""
    owner = replace(Owner.current(), **changes)
    record = json.dumps({"kind": "timmx-staging", **asdict(owner)})
    return {RUN_LABEL: uuid.uuid4().hex, OWNER_LABEL: record}


def create_containers(client, **labels: dict[str, str]) -> dict:
    """A container (created, never started) per name, with those labels."""
    image = any_image(client)
    return {
        name: client.containers.create(
            image,
            command=["true"],
            name=f"timmx-clean-test-{name.replace('_', '-')}-{uuid.uuid4().hex[:8]}",
            labels=its_labels,
        )
        for name, its_labels in labels.items()
    }


def remove_all(containers: dict) -> None:
    from docker.errors import NotFound

    for container in containers.values():
        with suppress(NotFound):
            container.remove(force=True)


def exists(client, container) -> bool:
    from docker.errors import NotFound

    try:
        client.containers.get(container.id)
    except NotFound:
        return False
    return True


@pytest.mark.isolated
def test_clean_removes_containers_whose_cli_is_gone(
    docker_client, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = create_containers(
        docker_client,
        gone=owner_labels(pid=dead_pid()),
        live=container_labels(),  # this process's: alive
        # a CLI in a container that shares this engine: its pid is of its own namespace
        other_ns=owner_labels(pid=dead_pid(), pidns="pid:[1]"),
        other_host=owner_labels(pid=dead_pid(), hostname=f"not-{socket.gethostname()}"),
        pid_only={RUN_LABEL: str(dead_pid())},  # an older timmx's: whose pid, in what namespace?
    )
    try:
        monkeypatch.chdir(tmp_path)
        done = cli("clean")
        assert done.code == 0, done.err
        assert f"removed container {made['gone'].name}" in done.out
        assert not exists(docker_client, made["gone"])
        for kept in ("live", "other_ns", "other_host", "pid_only"):
            assert exists(docker_client, made[kept]), kept
            assert made[kept].name not in done.out
        assert "kept" in done.err and "no owner record" in done.err
        assert made["pid_only"].name in done.err
    finally:
        remove_all(made)


@pytest.mark.isolated
def test_ctrl_c_removes_only_this_runs_containers(docker_client) -> None:
    """Another run whose CLI has this process's pid in its own pid namespace keeps its
    containers when this build is interrupted."""
    from timmx.build.execute import _remove_containers

    made = create_containers(
        docker_client,
        mine=container_labels(),
        same_pid=owner_labels(pidns="pid:[1]"),  # another run, same pid number
        pid_only={RUN_LABEL: str(os.getpid())},  # an older timmx's, labelled by pid alone
    )
    try:
        assert made["mine"].labels[RUN_LABEL] == run_id()
        _remove_containers()
        assert not exists(docker_client, made["mine"])
        assert exists(docker_client, made["same_pid"]) and exists(docker_client, made["pid_only"])
    finally:
        remove_all(made)
