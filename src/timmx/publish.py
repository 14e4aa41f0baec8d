"""Write artifacts so that a failed export never leaves a file that looks finished.

A backend writes into a private staging folder beside the destination (same filesystem, so a
rename is atomic); only a verified artifact is moved into place, and the report comes last.
A staging folder that a killed process left is removed later (see timmx.cleanup).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from timmx.cleanup import remove_stale_siblings, write_owner
from timmx.contract import ArtifactFile
from timmx.errors import InvalidInputError
from timmx.ownership import check_replaceable

if TYPE_CHECKING:
    from timmx.backends.base import Backend


def check_output(path: Path, backend: Backend) -> None:
    """Refuse an output path that cannot be written, or whose present content timmx did not
    make (see timmx.ownership), before any work is done."""
    allowed = backend.suffixes
    if path.suffix not in allowed and not backend.any_folder_name:
        ends = " or ".join(allowed)
        raise InvalidInputError(
            f"--output {path} must end with {ends} for the {backend.name} backend"
        )
    folder = backend.is_folder_artifact(path.name)
    if path.exists() and not path.is_symlink() and path.is_dir() != folder:
        raise InvalidInputError(f"--output {path} exists and is of another kind: remove it first")
    check_replaceable(path, backend)
    parent = path.parent
    create_output_folder(parent, "choose another --output")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"cannot write to {parent} (permission denied): choose another --output"
        )


def create_output_folder(folder: Path, fix: str) -> None:
    """Create `folder` and its parents; where that fails, say so and what to do (`fix`)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot create the output folder {folder} ({exc.strerror}): {fix}"
        ) from None


@contextmanager
def staging_folder(destination: Path) -> Iterator[Path]:
    """A private folder beside `destination`, removed on exit whatever happens. It records its
    owner, so that one a killed process left is removed later: here, by the next export to the
    same destination, or by `timmx clean`."""
    remove_stale_siblings(destination)
    folder = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        write_owner(folder)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def publish(staged: list[Path], staging: Path, destination_dir: Path) -> list[Path]:
    """Move staged files (or folders) into `destination_dir`, each by an atomic rename. The
    caller has just proved that what they replace is timmx's (`timmx.ownership`)."""
    placed = []
    for source in staged:
        target = destination_dir / source.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            _replace_folder(source, target)
        else:
            os.replace(source, target)
        placed.append(target)
    return placed


def _replace_folder(source: Path, target: Path) -> None:
    if not target.exists():
        os.rename(source, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(source, target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a report is as readable as a file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def describe_files(paths: list[Path], root: Path) -> list[ArtifactFile]:
    """Size and sha256 of each file (every file inside a folder artifact)."""
    files = []
    for path in paths:
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for member in members:
            files.append(
                ArtifactFile(
                    path=member.relative_to(root).as_posix(),
                    bytes=member.stat().st_size,
                    sha256=sha256(member),
                )
            )
    return files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def report_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")
