"""Ray itself, for `timmx build --ray`: joining a cluster, and what its failures mean, each in
one line that says what to do."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from timmx.errors import InvalidInputError, TimmxError, first_line
from timmx.quiet import debug_output

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


def say(line: str) -> None:
    """One line of the build's own, above its progress table when the CLI shows one."""
    console = sys.modules.get("timmx.cli.console")
    if console is not None:
        console.err.print(console.escape(line), soft_wrap=True)
    else:
        print(line, file=sys.stderr, flush=True)


class _RoutedStream:
    """sys.stderr while Ray runs: what Ray's own threads print (its error listener's raylet
    dumps, in colour) goes to the log; everything else, the build's table included, through."""

    def __init__(self, through, log) -> None:
        self.through = through
        self.log = log
        self.all_to_log = False  # during ray.shutdown, which prints what Ray held back

    def write(self, text: str) -> int:
        if self.all_to_log or threading.current_thread().name.startswith("ray_"):
            return self.log.write(plain(text))
        return self.through.write(text)

    def print_worker_logs(self, original: Callable) -> Callable:
        """Ray's printer of its nodes' log lines (a lost raylet's last 20, in colour), which
        holds the stream it was handed rather than sys.stderr: the log file instead."""

        def to_log(data, print_file, *args, **kwargs):
            return original(data, _Plain(self.log), *args, **kwargs)

        return to_log

    def __getattr__(self, name: str):
        return getattr(self.through, name)


class _Plain:
    def __init__(self, log) -> None:
        self.log = log

    def write(self, text: str) -> int:
        return self.log.write(plain(text))

    def flush(self) -> None:
        self.log.flush()


class KeptLog:
    """The log file of `ray_logs_kept`."""

    def __init__(self, path: Path | None = None, stream: _RoutedStream | None = None) -> None:
        self._path = path
        self._stream = stream

    def path(self) -> Path | None:
        """The log file, once something was written to it."""
        return self._path if self._path and self._path.stat().st_size else None

    @contextlib.contextmanager
    def everything(self) -> Iterator[None]:
        """Every line to the log meanwhile: around ray.shutdown, which prints from this thread
        what Ray's log deduplicator held back (a lost raylet's last 20 log lines)."""
        if self._stream is not None:
            self._stream.all_to_log = True
        try:
            yield
        finally:
            if self._stream is not None:
                self._stream.all_to_log = False


@contextlib.contextmanager
def ray_logs_kept(log_folder: Path) -> Iterator[KeptLog]:
    """While a build talks to Ray: Ray's log lines (its C++ core's on file descriptor 2, its
    Python threads' prints, its loggers) go to a log file instead of the terminal, which the
    `KeptLog` yielded names. --debug: no change."""
    if debug_output():
        yield KeptLog()
        return
    log_folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    path = log_folder / f"ray-{stamp}.{os.getpid()}.log"
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    previous_stderr = sys.stderr
    handlers = [
        h
        for h in logging.getLogger("ray").handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    streams = [h.setStream(log) for h in handlers]
    saved_fd = terminal = printer = worker = None
    try:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if previous_stderr.fileno() == 2:  # the real stderr: native writes to the log
                previous_stderr.flush()
                saved_fd = os.dup(2)
                terminal = open(  # noqa: SIM115
                    os.dup(saved_fd), "w", buffering=1, encoding="utf-8", errors="replace"
                )
                os.dup2(log.fileno(), 2)
        routed = _RoutedStream(terminal or previous_stderr, log)
        sys.stderr = routed
        worker = sys.modules.get("ray._private.worker")
        printer = getattr(worker, "print_worker_logs", None)
        if printer is not None:
            worker.print_worker_logs = routed.print_worker_logs(printer)
        yield KeptLog(path, routed)
    finally:
        sys.stderr = previous_stderr
        if printer is not None:
            worker.print_worker_logs = printer
        if saved_fd is not None:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        if terminal is not None:
            terminal.close()
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
        log.close()
        if not path.stat().st_size:
            path.unlink(missing_ok=True)
