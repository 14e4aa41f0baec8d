"""Accept what a worker outside this process made, as untrusted input: the files a container
left in its output folder, or the bytes a Ray task sent back. The one path to publication for
the one-job container, warm containers and Ray.

- Names: only the destination's name and the side files its backend declares
  (`Backend.side_files`) are published; for a folder artifact every file under that folder.
  A result that names anything else (`.git/hooks/pre-commit`, `../x`) is refused.
- Kinds: regular files with one link, reached through real folders. Each file is opened with
  O_NOFOLLOW at every step of its path, and checked on the open descriptor: no symlink, hardlink,
  FIFO or device gets through, in a folder artifact either.
- Bytes: each file is copied into a fresh staging folder of this host, which no container
  mounts, and hashed as it is copied; the copy must match the worker's record, and the copy is
  what is published. A warm container that rewrites or swaps a file meanwhile changes nothing
  that lands.
- Verification (`check_success`): a result is published when its verification passed, or
  was skipped because the job asked for --no-verify, or was skipped because no runtime of the
  backend runs where the worker ran, for a backend whose options allow that
  (`Backend.may_lack_runtime`). A missing, failed or "partial" verification (no runner makes
  one) is refused.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from timmx.backends import get_backend
from timmx.contract import ArtifactFile, ExportJob, ExportResult
from timmx.errors import ContractError
from timmx.ownership import check_replaceable
from timmx.publish import publish, staging_folder

_BLOCK = 1 << 20
# A file's bytes as they are read; at most `limit` + 1 bytes, so a file that grows stops early.
Reader = Callable[[str, int], Iterator[bytes]]


@dataclass(frozen=True)
class Declared:
    """What a job may publish beside its destination: the artifact's own name (a file, or a
    folder and everything in it) and its backend's side files."""

    name: str
    folder: bool
    side_files: frozenset[str]
    backend: str

    @classmethod
    def of(cls, job: ExportJob) -> Declared:
        from timmx.backends import get_backend

        backend = get_backend(job.backend)
        name = Path(job.output).name
        return cls(
            name,
            backend.is_folder_artifact(name),
            frozenset(backend.side_files(name)),
            backend.name,
        )

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *sorted(self.side_files))


def check_success(result: ExportResult, job: ExportJob, fix: str) -> None:
    """Refuse a result that is not a success whose verification allows publishing (see the
    module's doc). A worker's error is the caller's to raise first, with the host's paths."""
    from timmx.backends import get_backend

    if result.status != "success":
        raise ContractError(
            f"the worker reported a failure without an error: nothing was published ({fix})"
        )
    verification = result.verification
    status = "missing" if verification is None else verification.status
    if status == "passed":
        return
    if status == "skipped":
        backend = get_backend(job.backend)
        if not job.verify.enabled or backend.may_lack_runtime(backend.parse_options(job.options)):
            return
    raise ContractError(
        f"the worker reported success but its verification is {status}: nothing was published "
        f"({fix})"
    )


def accept_folder(
    result: ExportResult, job: ExportJob, out: Path, destination: Path, fix: str
) -> None:
    """Publish beside `destination` the files a worker left in `out` (a folder it may still
    write to), as copies checked against `result`'s record."""
    check_success(result, job, fix)
    declared = Declared.of(job)
    record = checked_record(result, declared, fix)
    _same_files(record, _files_in_out(out, declared, fix), fix)
    _publish_copies(
        record, destination, lambda path, limit: _read(out, path, limit, fix), fix, declared
    )


def accept_bytes(
    result: ExportResult,
    job: ExportJob,
    files: dict[str, bytes] | None,
    destination: Path,
    fix: str,
) -> None:
    """Publish beside `destination` the files a Ray task sent back (path -> bytes), checked
    against `result`'s record."""
    check_success(result, job, fix)
    declared = Declared.of(job)
    record = checked_record(result, declared, fix)
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, bytes) for k, v in files.items()
    ):
        raise ContractError(
            f"the worker's files are not paths and bytes: nothing was published ({fix})"
        )
    for path in files:
        _check_path(path, declared, fix)
    _same_files(record, set(files), fix)
    _publish_copies(record, destination, lambda path, limit: iter([files[path]]), fix, declared)


def checked_record(result: ExportResult, declared: Declared, fix: str) -> dict[str, ArtifactFile]:
    """The result's artifacts by path, each a declared name (or a file under a folder
    artifact), the artifact itself among them."""
    record: dict[str, ArtifactFile] = {}
    for artifact in result.artifacts:
        _check_path(artifact.path, declared, fix)
        if artifact.path in record or artifact.bytes < 0:
            raise ContractError(
                f"the worker recorded {_shown(artifact.path)} twice, or with a negative size: "
                f"nothing was published ({fix})"
            )
        record[artifact.path] = artifact
    if not any(PurePosixPath(path).parts[0] == declared.name for path in record):
        raise ContractError(
            f"the worker reported success but no {declared.name}: nothing was published ({fix})"
        )
    return record


def _check_path(path: str, declared: Declared, fix: str) -> None:
    pure = PurePosixPath(path)
    plain = (
        path == pure.as_posix()  # no `a//b`, `./a` or trailing `/`
        and not pure.is_absolute()
        and "\\" not in path
        and all(part not in (".", "..") for part in pure.parts)
        and bool(pure.parts)
    )
    if not plain:
        raise ContractError(
            f"the worker's artifact {_shown(path)} is not a plain path in its output folder: "
            f"nothing was published ({fix})"
        )
    top, depth = pure.parts[0], len(pure.parts)
    if top == declared.name and (depth > 1) == declared.folder:
        return
    if top in declared.side_files and depth == 1:
        return
    allowed = " and ".join(declared.names)
    raise ContractError(
        f"the worker's artifact {_shown(path)} is not one the {declared.backend} export declares "
        f"({allowed}): nothing was published ({fix})"
    )


def _files_in_out(out: Path, declared: Declared, fix: str) -> set[str]:
    """Every declared file present in `out` (relative paths); anything but a regular file or a
    folder (in a folder artifact) is refused, naming it and what it is."""
    found: set[str] = set()
    for name in declared.names:
        try:
            mode = os.lstat(out / name).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ContractError(
                f"cannot list the worker's output ({exc.strerror}): nothing was published ({fix})"
            ) from None
        folder = declared.folder and name == declared.name
        if folder and stat.S_ISDIR(mode):
            found.update(_walk(out, name, fix))
        elif not folder and stat.S_ISREG(mode):
            found.add(name)
        elif folder and stat.S_ISREG(mode):
            raise ContractError(
                f"the worker's artifact {_shown(name)} is a file, where the {declared.backend} "
                f"export makes a folder: nothing was published ({fix})"
            )
        else:
            raise ContractError(_not_regular(name, mode, fix))
    return found


def _walk(out: Path, name: str, fix: str) -> Iterator[str]:
    with os.scandir(out / name) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            relative = f"{name}/{entry.name}"
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(out, relative, fix)
            elif entry.is_file(follow_symlinks=False):
                yield relative
            else:
                raise ContractError(
                    _not_regular(relative, entry.stat(follow_symlinks=False).st_mode, fix)
                )


def _same_files(record: dict[str, ArtifactFile], present: Iterable[str], fix: str) -> None:
    present = set(present)
    missing = sorted(set(record) - present)
    if missing:
        raise ContractError(
            f"the worker's artifact {_shown(missing[0])} is not in its output folder: nothing "
            f"was published ({fix})"
        )
    unrecorded = sorted(present - set(record))
    if unrecorded:  # nothing is published that the report does not list
        raise ContractError(
            f"the worker's output has files it did not record: {_shown(unrecorded[0])}: nothing "
            f"was published ({fix})"
        )


def _publish_copies(
    record: dict[str, ArtifactFile], destination: Path, read: Reader, fix: str, declared: Declared
) -> None:
    """Copy every recorded file into a fresh staging folder of this host, hashing the bytes
    written; publish the copies when all match the record."""
    with staging_folder(destination) as staging:
        for path, artifact in sorted(record.items()):
            target = staging / path
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy(read(path, artifact.bytes), target, artifact, fix)
        tops = sorted({PurePosixPath(path).parts[0] for path in record})
        check_replaceable(destination, get_backend(declared.backend))  # proved as late as can be
        publish([staging / top for top in tops], staging, destination.parent)


def _copy(chunks: Iterator[bytes], target: Path, artifact: ArtifactFile, fix: str) -> None:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as handle:
        for chunk in chunks:
            digest.update(chunk)
            handle.write(chunk)
            size += len(chunk)
    if size != artifact.bytes or digest.hexdigest() != artifact.sha256:
        raise ContractError(
            f"the artifact {_shown(artifact.path)} differs from the worker's record: nothing was "
            f"published ({fix})"
        )


def _read(out: Path, path: str, limit: int, fix: str) -> Iterator[bytes]:
    """The bytes of `out/path`, opened without following a link at any step, from a regular
    file with one link; at most `limit` + 1 bytes."""
    fd = _open_no_links(out, path, fix)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ContractError(_not_regular(path, info.st_mode, fix))
        if info.st_nlink != 1:
            raise ContractError(
                f"the worker's artifact {_shown(path)} has {info.st_nlink} hard links, so "
                f"another name could change it: nothing was published ({fix})"
            )
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(_BLOCK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _open_no_links(out: Path, path: str, fix: str) -> int:
    *folders, name = PurePosixPath(path).parts
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for folder in folders:
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        # O_NONBLOCK: a FIFO put there meanwhile must not hang the open; fstat refuses it
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        raise ContractError(
            f"the worker's artifact {_shown(path)} cannot be read as a regular file in its "
            f"output folder ({os.strerror(exc.errno or 0)}): nothing was published ({fix})"
        ) from None
    finally:
        os.close(fd)


def _not_regular(path: str, mode: int, fix: str) -> str:
    return (
        f"the worker's artifact {_shown(path)} is {_kind(mode)}, not a regular file: nothing was "
        f"published ({fix})"
    )


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "of an unknown kind")


def _shown(path: str) -> str:
    """A worker's path in one line of a message: quoted when it has odd characters."""
    shown = path if path.isprintable() else repr(path)
    return shown if len(shown) <= 120 else shown[:117] + "..."
