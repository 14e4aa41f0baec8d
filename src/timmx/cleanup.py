"""What a killed export leaves behind, and how to tell that its owner is gone.

A process killed with SIGKILL runs no `finally`: its hidden staging folder stays beside the
destination, a build's `.timmx-work-*` exchange folder stays in its output folder, and its export
containers stay in the engine. Each such folder records its owner in `owner.json` (pid, host,
boot, pid namespace and the process's start time, so that a reused pid does not count as the
owner); each export container carries its run's id in the `ai.timmx.run` label and the same
owner record in `ai.timmx.owner`. A leftover is removed only when its owner is provably gone;
one from another host or pid namespace (a CLI in a container sharing the host's engine), or with
no readable owner, is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import string
import uuid
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

OWNER_FILE = "owner.json"
_KIND = "timmx-staging"
EXCHANGE_PREFIX = ".timmx-work-"  # a build's exchange folder with its warm containers
RUN_LABEL = "ai.timmx.run"  # on every export container: the id of the run that made it
OWNER_LABEL = "ai.timmx.owner"  # and its owner record, as in owner.json
# tempfile.mkdtemp(prefix=".<artifact name>.") adds 8 of these characters.
_RANDOM_CHARS = frozenset(string.ascii_lowercase + string.digits + "_")
_RANDOM_LEN = 8
# Folders `timmx clean` does not walk into: nothing of an export's lives there.
SKIPPED_FOLDERS = frozenset(
    {".git", ".hg", ".svn", ".venv", "venv", "node_modules", "__pycache__", ".tox", ".nox"}
    | {".mypy_cache", ".ruff_cache", ".pytest_cache", "site-packages"}
)


@dataclass(frozen=True)
class Owner:
    """A process, identified beyond its pid."""

    pid: int
    hostname: str
    boot_id: str | None  # /proc/sys/kernel/random/boot_id: pids and start times are per boot
    start: int | None  # clock ticks after boot, /proc/<pid>/stat field 22 (Linux only)
    pidns: str | None = None  # /proc/self/ns/pid: the pid means a process only in this namespace

    @classmethod
    def current(cls) -> Owner:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), _boot_id(), process_start(pid), _pid_namespace())

    def is_gone(self) -> bool | None:
        """True when this process has ended; None when that is unknowable from here: it ran on
        another host, or in another pid namespace (or one its record does not name)."""
        if self.hostname != socket.gethostname():
            return None
        if self.boot_id is not None and self.boot_id != _boot_id():
            return True  # the host restarted since: every process of that boot is gone
        if self.pidns != _pid_namespace():
            return None  # its pid names another process here, or none
        return not pid_alive(self.pid, self.start)


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process `pid` runs here (a zombie does not count); with `start`, only the process
    that started at that tick counts, not a later one that got the same pid."""
    if pid <= 0:
        return False
    stat = _stat(pid)
    if stat is not None:
        state, started = stat
        return state not in ("Z", "X") and (start is None or started == start)
    if Path("/proc/self/stat").exists():
        return False  # procfs is there and the pid is not
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def process_start(pid: int) -> int | None:
    stat = _stat(pid)
    return stat[1] if stat else None


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of /proc/<pid>/stat; the name in parentheses may hold anything."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # from field 3, the state
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return None


# Staging folders


def write_owner(folder: Path) -> None:
    """Record this process as `folder`'s owner (best effort: without it the folder is only ever
    removed by its owner)."""
    record = {"kind": _KIND, **asdict(Owner.current())}
    with suppress(OSError):
        (folder / OWNER_FILE).write_text(json.dumps(record) + "\n")


def read_owner(folder: Path) -> Owner | None:
    try:
        return _owner_from(json.loads((folder / OWNER_FILE).read_text()))
    except (OSError, ValueError):
        return None  # none yet (its owner is writing it), or not ours


def _owner_from(record: Any) -> Owner | None:
    """The Owner an owner record names; None for anything else."""
    try:
        if record.pop("kind", None) != _KIND:
            return None
        return Owner(
            pid=int(record["pid"]),
            hostname=str(record["hostname"]),
            boot_id=_text_or_none(record.get("boot_id")),
            start=None if record.get("start") is None else int(record["start"]),
            pidns=_text_or_none(record.get("pidns")),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def looks_like_staging(name: str) -> bool:
    """`.<artifact name>.<8 random characters>`, as staging_folder names them."""
    if not name.startswith(".") or len(name) < _RANDOM_LEN + 3:
        return False
    head, dot, tail = name[1:].rpartition(".")
    return bool(head) and bool(dot) and len(tail) == _RANDOM_LEN and set(tail) <= _RANDOM_CHARS


def looks_like_exchange(name: str) -> bool:
    """`.timmx-work-<8 random characters>`, as a build's warm containers name them."""
    tail = name.removeprefix(EXCHANGE_PREFIX)
    return tail != name and len(tail) == _RANDOM_LEN and set(tail) <= _RANDOM_CHARS


def is_stale_staging(folder: Path) -> bool:
    """A staging folder whose owner is provably gone."""
    if not looks_like_staging(folder.name) or folder.is_symlink() or not folder.is_dir():
        return False
    owner = read_owner(folder)
    return owner is not None and owner.is_gone() is True


def remove_stale_siblings(destination: Path) -> list[Path]:
    """Remove the staging folders of `destination` that killed processes left; never raises."""
    removed = []
    prefix = f".{destination.name}."
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or len(entry.name) != len(prefix) + _RANDOM_LEN:
            continue
        path = Path(entry.path)
        if is_stale_staging(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def find_stale_staging(roots: Iterable[Path]) -> Iterator[tuple[Path, Owner]]:
    """Stale staging and exchange folders in `roots` and their subfolders (not into
    SKIPPED_FOLDERS, nor into symlinks, staging or exchange folders)."""
    for root in roots:
        for parent, folders, _files in os.walk(root):
            keep = []
            for name in sorted(folders):
                path = Path(parent, name)
                if looks_like_staging(name) or looks_like_exchange(name):
                    owner = read_owner(path)
                    if owner is not None and owner.is_gone() is True and not path.is_symlink():
                        yield path, owner
                    continue  # its inside is its owner's business
                if name not in SKIPPED_FOLDERS:
                    keep.append(name)
            folders[:] = keep


# Export containers


def engine_is_local(client: Any) -> bool:
    """Whether the engine runs on this host (a unix socket or a local address): only then do
    the pids in the labels name processes here."""
    url = str(getattr(client.api, "base_url", ""))
    if url.startswith("http+docker://local"):  # unix socket or npipe
        return True
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in {"localhost", "127.0.0.1", "[::1]"}


@cache
def run_id() -> str:
    """This process's run id: its export containers carry it, and Ctrl-C removes those only."""
    return uuid.uuid4().hex


def container_labels() -> dict[str, str]:
    """The labels of an export container this process makes."""
    owner = json.dumps({"kind": _KIND, **asdict(Owner.current())})
    return {RUN_LABEL: run_id(), OWNER_LABEL: owner}


def container_owner(container: Any) -> Owner | None:
    """The owner an export container's labels record; None when they record none (a container
    of an older timmx, labelled with its pid alone: that pid may be of another namespace)."""
    try:
        return _owner_from(json.loads(container.labels.get(OWNER_LABEL, "")))
    except ValueError:
        return None


def stale_containers(client: Any) -> tuple[list[tuple[Any, Owner]], list[Any]]:
    """Export containers (any state) whose owner is provably gone, with their owner; and those
    with no owner record, whose owner cannot be known."""
    stale, unowned = [], []
    for container in client.containers.list(all=True, filters={"label": RUN_LABEL}):
        owner = container_owner(container)
        if owner is None:
            unowned.append(container)
        elif owner.is_gone() is True:
            stale.append((container, owner))
    return stale, unowned
