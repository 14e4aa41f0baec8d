"""Connect to the Docker engine, or say in one line how to start it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from timmx.errors import DockerError, first_line

if TYPE_CHECKING:
    import docker

START_HINT = "start it (`sudo systemctl start docker`, or run `dockerd`)"


def connect(fallback: str = "") -> docker.DockerClient:
    """A client that answered a ping; DockerError saying how to start the engine otherwise.

    `fallback` is appended to the hint, e.g. "or drop --isolated to export in this process".
    """
    try:
        import docker
        import requests
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - docker is a core dependency
        raise DockerError("the docker SDK is not installed: pip install docker") from None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except (DockerException, requests.RequestException, OSError) as exc:
        reason = first_line(exc, 160)
        hint = f"{START_HINT}{', ' + fallback if fallback else ''}"
        raise DockerError(f"the Docker engine is not reachable ({reason}): {hint}") from None
    return client
