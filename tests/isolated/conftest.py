"""Fixtures for exports in Docker images: a reachable engine and the images, built once.

Outside CI, with no engine, the tests that need one skip with the reason; in CI (env CI set)
they fail instead. Build settings come from TIMMX_BASE_IMAGE / TIMMX_TORCH_INDEX_URL /
TIMMX_TORCH_WHEELS; a local base image made by `timmx images base` is used when none is named.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.isolated.helpers import build_image, run_containers

os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

REPO = Path(__file__).resolve().parents[2]
LOCAL_BASE = "timmx-base:bookworm"


def _engine_or_reason():
    try:
        from timmx.images.engine import connect

        return connect(), None
    except Exception as exc:
        return None, str(exc)


@pytest.fixture(scope="session")
def docker_client():
    client, reason = _engine_or_reason()
    if client is None:
        unavailable(f"tests/isolated need a Docker engine: {reason}")
    if not os.environ.get("TIMMX_BASE_IMAGE"):
        from docker.errors import ImageNotFound

        try:
            client.images.get(LOCAL_BASE)
            os.environ["TIMMX_BASE_IMAGE"] = LOCAL_BASE
        except ImageNotFound:
            pass
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client) -> dict[str, float]:
    """Build the onnx and torch images (no-op when present); returns each build's seconds."""
    # torch first: onnx reuses its torch layers
    return {name: build_image(name) for name in ("torch", "onnx")}


@pytest.fixture
def no_leftovers(docker_client) -> Iterator[None]:
    """After the test, no export container may be left, running or not."""
    yield
    left = run_containers(docker_client)
    for container in left:
        container.remove(force=True)
    assert not left, f"containers outlived the command: {[c.name for c in left]}"
