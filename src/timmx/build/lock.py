"""One `timmx build` at a time per output folder.

Two builds writing one folder would each rewrite its manifest from what they knew, so the one
that ends last keeps only its own jobs. A real build holds an exclusive `flock` on
`<output>/.timmx-build.lock` while it runs; a second one is refused in one line naming the
holder's pid. The kernel drops the lock when its holder ends, SIGKILL included: a lock file
left behind never blocks the next build. The file is removed when the lock is released.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from timmx.errors import InvalidInputError
from timmx.publish import create_output_folder

LOCK_NAME = ".timmx-build.lock"


@contextmanager
def build_lock(output: Path) -> Iterator[Path]:
    """Hold the output folder's build lock while the block runs (the folder is created);
    another build holding it is an InvalidInputError. A folder it created stays only if the
    block wrote something into it."""
    created = not output.exists()
    create_output_folder(output, "fix [build] output")
    path = output / LOCK_NAME
    fd = _acquire(path, output)
    try:
        yield path
    finally:
        # Removed while still held, so whoever opens the old file after this finds it gone
        # (see _acquire) rather than holding a lock that no one else can see.
        with suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with suppress(OSError):  # not empty: kept
                output.rmdir()


def _acquire(path: Path, output: Path) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InvalidInputError(
                f"cannot create the build lock {path} ({exc.strerror}): remove it, or make "
                f"{output} writable"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InvalidInputError(
                f"another timmx build is writing {output} ({holder}, lock {path.name}): wait "
                "for it to end, or set another [build] output"
            ) from None
        if _same_file(fd, path):
            if not _is_pid_record(os.pread(fd, 64, 0)):
                os.close(fd)
                raise InvalidInputError(
                    f"{path} is not a timmx build lock (it holds something else): move it "
                    "away, or set another [build] output"
                )
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # its holder released and removed it meanwhile: take the new one


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _is_pid_record(head: bytes) -> bool:
    """Whether a lock file's content is what a build writes (its pid), or nothing yet: only
    such a file is rewritten, and removed at release."""
    return re.fullmatch(rb"(\d{1,10}\n)?", head) is not None


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"pid {text}" if text.isdigit() else "pid unknown"
