"""Build the toolchain images while the in-process tests run, and the isolated tests after them.

On a fresh machine the images take most of the suite's time, and building them is mostly
downloading and unpacking: it overlaps well with the in-process tests, which are CPU-bound. So
when a session selects both kinds, the isolated tests move to the end, `timmx images build` (one
build at a time, as the engine wants) starts at collection, and an isolated test waits for it.

A test that names the toolchains it needs (`pytest.mark.isolated("rknn")`) lets the rest go
first: the images no test names are built first, then the named ones, while the isolated tests
of the first run; the tests that name toolchains run last and wait for the second build. A
failed build is not reported here: the isolated tests' own `timmx images build` runs again
after it and fails with the builder's message.

On in CI (env CI set), where the images start missing; TIMMX_TEST_PREBUILD=1 or 0 decides
elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

LOCAL_BASE = "timmx-base:bookworm"
# Building every image from nothing takes about 25 min on 2 cores; past this the isolated tests
# go on and build what is missing themselves.
WAIT_S = 3600


class Prebuild:
    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.log: Path | None = None
        self.started = 0.0
        self.seconds: list[float | None] = []
        self.finished: list[threading.Event] = []
        self.stopped = False

    def start(self, groups: list[list[str]]) -> None:
        """Build each group of toolchains in turn (an empty group: every toolchain)."""
        env = _build_env()
        if env is None:
            return
        handle, name = tempfile.mkstemp(prefix="timmx-test-images-", suffix=".log")
        os.close(handle)
        self.log = Path(name)
        self.started = time.monotonic()
        self.seconds = [None] * len(groups)
        self.finished = [threading.Event() for _ in groups]
        threading.Thread(target=self._build, args=(groups, env), daemon=True).start()

    def _build(self, groups: list[list[str]], env: dict[str, str]) -> None:
        for index, names in enumerate(groups):
            if not self.stopped:
                assert self.log is not None
                with self.log.open("a") as out:
                    self.process = subprocess.Popen(
                        [sys.executable, "-m", "timmx", "images", "build", *names],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                    )
                    self.process.wait()
                self.seconds[index] = time.monotonic() - self.started
            self.finished[index].set()

    def wait(self, group: int) -> None:
        """Until the builds up to `group` are done (or WAIT_S after the start)."""
        if not self.finished:
            return
        left = WAIT_S - (time.monotonic() - self.started)
        if not self.finished[min(group, len(self.finished) - 1)].wait(timeout=max(left, 0)):
            self.stop()

    def stop(self) -> None:
        self.stopped = True
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def summary(self) -> str | None:
        if not self.finished:
            return None
        took = ", then ".join(
            "still running" if s is None else f"done at {s:.0f} s" for s in self.seconds
        )
        return f"images built beside the tests ({took}); log: {self.log}"


def _build_env() -> dict[str, str] | None:
    """The environment the isolated tests build with, or None where no engine answers."""
    try:
        from timmx.images.engine import connect

        client = connect()
    except Exception:
        return None  # the isolated tests skip, or fail in CI, with the reason
    env = dict(os.environ)
    if not env.get("TIMMX_BASE_IMAGE"):  # as tests/isolated/conftest.py's docker_client does
        try:
            client.images.get(LOCAL_BASE)
            env["TIMMX_BASE_IMAGE"] = LOCAL_BASE
        except Exception:
            pass
    client.close()
    return env


_prebuild = Prebuild()


def _wanted() -> bool:
    chosen = os.environ.get("TIMMX_TEST_PREBUILD")
    return chosen == "1" if chosen else bool(os.environ.get("CI"))


def named_toolchains(item: pytest.Item) -> tuple[str, ...]:
    """The toolchains an isolated test names (`pytest.mark.isolated("rknn")`); () for none."""
    marker = item.get_closest_marker("isolated")
    return tuple(marker.args) if marker is not None else ()


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    isolated = [item for item in items if item.get_closest_marker("isolated")]
    if not isolated or len(isolated) == len(items):
        return
    unnamed = [item for item in isolated if not named_toolchains(item)]
    named = [item for item in isolated if named_toolchains(item)]
    items[:] = [item for item in items if not item.get_closest_marker("isolated")]
    items += unnamed + named
    if _wanted() and not config.option.collectonly:
        _prebuild.start(_groups({n for item in named for n in named_toolchains(item)}))


def _groups(late: set[str]) -> list[list[str]]:
    """The toolchains no test names first, then the named ones; one group when none is named."""
    if not late:
        return [[]]
    from timmx.images.recipes import all_recipes

    return [[r.name for r in all_recipes() if r.name not in late], sorted(late)]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("isolated"):
        _prebuild.wait(1 if named_toolchains(item) else 0)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _prebuild.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    line = _prebuild.summary()
    if line:
        terminalreporter.write_line(line)
