"""Build the toolchain images while the in-process tests run, and the isolated tests after them.

On a fresh machine the images take most of the suite's time, and building them is mostly
downloading and unpacking: it overlaps well with the in-process tests, which are CPU-bound. So
when a session selects both kinds, the isolated tests move to the end, one `timmx images build`
(one build at a time, as the engine wants) starts at collection, and the first isolated test
waits for it. A failed build is not reported here: the isolated tests' own `timmx images build`
runs again after it and fails with the builder's message.

On in CI (env CI set), where the images start missing; TIMMX_TEST_PREBUILD=1 or 0 decides
elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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
        self.seconds: float | None = None

    def start(self) -> None:
        env = _build_env()
        if env is None:
            return
        handle, name = tempfile.mkstemp(prefix="timmx-test-images-", suffix=".log")
        self.log = Path(name)
        self.started = time.monotonic()
        with os.fdopen(handle, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "timmx", "images", "build"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def wait(self) -> None:
        if self.process is None or self.seconds is not None:
            return
        try:
            self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.stop()
        self.seconds = time.monotonic() - self.started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def summary(self) -> str | None:
        if self.process is None:
            return None
        code = self.process.poll()
        state = "still running" if code is None else f"exit {code}"
        took = f" in {self.seconds:.0f} s" if self.seconds is not None else ""
        return f"images built beside the in-process tests ({state}{took}); log: {self.log}"


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


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    isolated = [item for item in items if item.get_closest_marker("isolated")]
    if not isolated or len(isolated) == len(items):
        return
    items[:] = [item for item in items if not item.get_closest_marker("isolated")] + isolated
    if _wanted() and not config.option.collectonly:
        _prebuild.start()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("isolated"):
        _prebuild.wait()


def pytest_sessionfinish(session: pytest.Session) -> None:
    _prebuild.stop()


def pytest_terminal_summary(terminalreporter) -> None:
    line = _prebuild.summary()
    if line:
        terminalreporter.write_line(line)
