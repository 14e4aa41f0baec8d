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


def interruptible() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it. A suite started in the
    background by a non-interactive shell ignores SIGINT, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
