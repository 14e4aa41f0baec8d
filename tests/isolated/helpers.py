"""Helpers for the isolated tests: run the CLI as a subprocess, find its export container."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN_LABEL = "ai.timmx.run"
OWNER_LABEL = "ai.timmx.owner"
TIMMX = [sys.executable, "-m", "timmx"]


# Processes whose export containers the tests own: this one (in-process CLI) and those spawned.
# Containers record their CLI's pid in their owner label, so a concurrent run elsewhere is never
# counted.
OWNERS: set[int] = {os.getpid()}


def owner_pid(labels: dict[str, str]) -> int | None:
    """The pid of the CLI that made a container with these labels (or event attributes)."""
    try:
        return int(json.loads(labels.get(OWNER_LABEL, ""))["pid"])
    except (ValueError, KeyError, TypeError):
        return None


def containers_of(client, pid: int, include_stopped: bool = True) -> list:
    """The export containers that the CLI with `pid` made (running only, without
    `include_stopped`)."""
    found = client.containers.list(all=include_stopped, filters={"label": RUN_LABEL})
    return [c for c in found if owner_pid(c.labels) == pid]


def run_containers(client) -> list:
    """This test session's export containers, running or not."""
    found = client.containers.list(all=True, filters={"label": RUN_LABEL})
    return [c for c in found if owner_pid(c.labels) in OWNERS]


def wait_for_container(client, proc: subprocess.Popen, timeout_s: float = 120):
    """The export container a running `timmx export --isolated` started."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = containers_of(client, proc.pid, include_stopped=False)
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(
                f"the export ended first:\n{proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    raise AssertionError("no export container appeared")


def wait_until_gone(client, pid: int, timeout_s: float = 600) -> None:
    """Until no export container of the CLI with `pid` is left; the bound is a hang guard."""
    deadline = time.monotonic() + timeout_s
    while containers_of(client, pid):
        if time.monotonic() > deadline:
            raise AssertionError("the orphaned container is still there")
        time.sleep(0.5)


def wait_for_log(container, needle: str, timeout_s: float = 600) -> None:
    """Until the container's output holds `needle` (the worker got that far); the bound is
    a hang guard only."""
    deadline = time.monotonic() + timeout_s
    while needle.encode() not in container.logs():
        container.reload()
        if container.status not in ("created", "running"):
            raise AssertionError(f"the container ended before printing {needle!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"the container never printed {needle!r}")
        time.sleep(0.05)


# The worker's first progress line: the job was read and the export has begun.
EXPORT_STARTED = "Loading torch and timm"


def interruptible() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it. A suite started in the
    background by a non-interactive shell ignores SIGINT, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_command(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a timmx command line to its end (a hang guard of 10 min), its output captured."""
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def spawn(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [*TIMMX, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
        **kwargs,
    )


def only_artifacts(folder: Path) -> list[str]:
    """Every entry in `folder`, hidden staging folders included."""
    return sorted(p.name for p in folder.iterdir())


def build_image(name: str) -> float:
    """`timmx images build NAME` (a no-op when the image is present); returns its seconds."""
    started = time.monotonic()
    done = subprocess.run(
        [*TIMMX, "images", "build", name], capture_output=True, text=True, timeout=3000
    )
    assert done.returncode == 0, f"building {name} failed:\n{done.stderr[-3000:]}"
    return time.monotonic() - started
