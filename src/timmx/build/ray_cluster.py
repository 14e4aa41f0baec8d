"""Ray itself, for `timmx build --ray`: joining a cluster, and what its failures mean, each in
one line that says what to do."""

from __future__ import annotations

import logging
import re
import socket

from timmx.errors import InvalidInputError, TimmxError, first_line

CONNECT_TIMEOUT_S = 5


def require_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InvalidInputError(
            "--ray needs Ray, which is not installed here: install timmx[ray] "
            "(pip install 'timmx[ray]')"
        ) from None
    return ray


def connect(ray, address: str) -> bool:
    """Join the cluster, or fail in seconds with one line; True when this call connected."""
    if ray.is_initialized():
        return False  # a caller that joined a cluster already keeps its connection
    _check_reachable(address)
    try:
        ray.init(
            address=address,
            namespace="timmx",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    except Exception as exc:
        raise TimmxError(f"cannot join the Ray cluster at {address}: {first_line(exc)}") from None
    return True


def _check_reachable(address: str) -> None:
    """A TCP connection to the address first: `ray.init` retries an unreachable one for
    minutes."""
    if address == "local":
        return  # Ray starts a cluster in this process
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address

            target = canonicalize_bootstrap_address("auto") or ""
        except Exception:  # none running: ray.init says so at once
            return
        if not target:
            return
    target = target.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInputError(
            f"--ray takes the head's HOST:PORT (or ray://HOST:PORT, or auto), got {address!r}"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TimmxError(
            f"cannot reach the Ray cluster at {address} ({reason}, waited up to "
            f"{CONNECT_TIMEOUT_S} s): start it (`ray start --head`) or fix the address"
        ) from None


def task_failure(ray, exc: Exception, runs: int) -> str:
    """What a task's failure (`exc`, a RayError) means; `runs`: how often a task is run
    before its worker's death fails it."""
    exceptions = ray.exceptions
    if isinstance(exc, exceptions.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        text = first_line(cause)
        if "No module named 'timmx" in text:
            return "timmx is not importable on the Ray node: install the same timmx on every node"
        return f"the task failed on the Ray node: {type(cause).__name__}: {text}"
    if isinstance(exc, exceptions.OutOfMemoryError):
        return "the Ray node ran out of memory: raise `memory` for this job in the build file"
    if isinstance(exc, exceptions.WorkerCrashedError | exceptions.NodeDiedError):
        return (
            f"the Ray worker running it died {runs} times (a node lost, or out of memory): "
            f"{plain(first_line(exc))}"
        )
    return f"Ray: {type(exc).__name__}: {plain(first_line(exc))}"


def plain(text: str) -> str:
    """Ray's messages carry terminal colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
