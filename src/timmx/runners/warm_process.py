"""Jobs run by a warm `timmx.worker --serve` process of this host, so torch, timm and the
converters are imported once for many jobs, and each job still runs in a process of its own
seeding. Used by `timmx build` for its in-process jobs, one per parallel slot.

A job that runs past its time limit is stopped by killing the process; a process that died
(killed, out of memory, timed out) fails only the job it ran, and the next job starts another.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO, Self

from timmx.cleanup import remove_stale_siblings
from timmx.contract import ExportJob, ExportResult
from timmx.errors import ExportFailedError, error_from_kind
from timmx.runners.base import Progress, no_progress
from timmx.runners.protocol import (
    ErrorMessage,
    JobMessage,
    ProgressMessage,
    ResultMessage,
    read_message,
    write_message,
)
from timmx.runners.spec import WarmProcessSpec
from timmx.time_limit import timed_out_message


class WarmProcess:
    """One worker process at a time, started at the first job (and again after one died or for
    another workspace); `spec.timeout_s` limits each job. Leaving the `with` ends it."""

    def __init__(self, spec: WarmProcessSpec | None = None) -> None:
        self.spec = spec or WarmProcessSpec()
        self.process: subprocess.Popen[str] | None = None
        self._workspace: Path | None = None
        self._log: IO[bytes] | None = None
        self._timed_out = threading.Event()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(
        self, job: ExportJob, workspace: Path, progress: Progress = no_progress
    ) -> ExportResult:
        if not self.alive or workspace != self._workspace:
            self.close()  # it died (killed, timed out), or serves another workspace
            self._start(workspace)
        # Kept here, not by the worker's own watchdog: a job stuck in native code holding the
        # GIL would never let a timer thread of the worker run.
        timeout_s = self.spec.timeout_s
        self._timed_out.clear()
        timer = threading.Timer(timeout_s, self._kill_for_time)
        timer.daemon = True
        timer.start()
        try:
            return self._exchange(job, workspace, timeout_s, progress)
        finally:
            timer.cancel()

    def _start(self, workspace: Path) -> None:
        self._workspace = workspace
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="timmx-worker-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "timmx.worker", "--serve", str(workspace), "--host-paths"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches it through us, in order
        )

    def _exchange(
        self, job: ExportJob, workspace: Path, timeout_s: int, progress: Progress
    ) -> ExportResult:
        process = self.process
        assert process is not None and process.stdin is not None and process.stdout is not None
        with contextlib.suppress(OSError):  # it died: what it says on the way out is read below
            write_message(process.stdin, JobMessage(job=job))
        while (message := read_message(process.stdout)) is not None:
            match message:
                case ProgressMessage():
                    progress(message.progress)
                case ResultMessage():
                    return message.result
                case ErrorMessage():
                    raise error_from_kind(message.error.kind, message.error.message)
        raise self._died(job, workspace, timeout_s)

    def _kill_for_time(self) -> None:
        self._timed_out.set()
        if self.process is not None:
            with contextlib.suppress(OSError):  # the group: converters' subprocesses too
                os.killpg(self.process.pid, signal.SIGKILL)

    def _died(self, job: ExportJob, workspace: Path, timeout_s: int) -> ExportFailedError:
        assert self.process is not None and self._log is not None
        code = self.process.wait()
        # A killed worker ran no `finally`: its staging folder beside the artifact stays.
        remove_stale_siblings(workspace / job.output)
        if self._timed_out.is_set():
            return ExportFailedError(timed_out_message(job.backend, timeout_s))
        tail = Path(self._log.name).read_text(errors="replace").strip().splitlines()[-3:]
        how = f"was killed (signal {-code})" if code < 0 else f"ended (exit code {code})"
        return ExportFailedError(
            f"the worker process {how} during this job: {' | '.join(tail) or 'no output'}"
        )

    def interrupt(self) -> None:
        """Ctrl-C: the worker removes its job's staging folder and ends."""
        if self.alive:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGINT)

    def close(self, timeout_s: float = 30) -> None:
        """End the process (its stdin closes), killing it after `timeout_s`."""
        process, self.process = self.process, None
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):  # a worker that died closed it already
                    process.stdin.close()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
