"""Whether timmx made what is at an output path: only then may an export replace it.

An export replaces its destination by a rename, and a folder destination is removed after that.
So before anything is replaced, the thing there must be provably a previous artifact of the same
backend: its report beside it (`<artifact>.json`) names that backend and lists every file it
holds, or its content is that backend's alone (`Backend.owns_existing`). An empty folder holds
nothing to lose. The current folder, the folders above it, the home folder and the filesystem
root are never replaced, whatever they hold. Anything else is refused in one line, untouched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from timmx.errors import InvalidInputError

if TYPE_CHECKING:
    from timmx.backends.base import Backend


def refuse_protected(path: Path, flag: str = "--output") -> None:
    """The current folder, a folder above it, the home folder (or above it) and `/` are never
    an artifact's place: a typo like `-o .` must not replace them."""
    target = path.resolve()
    places = {Path.cwd().resolve(): "the current folder", Path.home().resolve(): "the home folder"}
    for place, name in places.items():
        if target == place or target in place.parents:
            what = name if target == place else f"a folder above {name}"
            raise InvalidInputError(
                f"{flag} {path} is {what}: name a new folder (or file) for the artifact"
            )


def check_replaceable(path: Path, backend: Backend, flag: str = "--output") -> None:
    """Refuse, in one line, to replace `path` (which exists) unless this backend made it; with
    every side file the backend may write beside it (`Backend.side_files`) likewise."""
    refuse_protected(path, flag)
    if path.is_symlink():
        raise InvalidInputError(
            f"{flag} {path} is a symbolic link, which timmx never makes: remove it or choose "
            "another path"
        )
    if path.exists():
        strangers = _not_made_by(path, backend)
        if strangers is not None:
            raise InvalidInputError(_refusal(flag, path, backend, strangers))
    for name in backend.side_files(path.name):
        side = path.with_name(name)
        if not (side.exists() or side.is_symlink()):
            continue
        if side.is_symlink() or side.is_dir() or not _side_file_is_ours(path, side, backend):
            raise InvalidInputError(
                f"{flag} {path} would replace {side}, which timmx did not make beside it: move it "
                "or choose another path"
            )


def _refusal(flag: str, path: Path, backend: Backend, strangers: list[str]) -> str:
    if not strangers:
        return (
            f"{flag} {path} exists and is not an artifact of timmx's {backend.name} backend: "
            "choose another path, or remove it first"
        )
    shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if strangers[3:] else "")
    return (
        f"{flag} {path} is a folder that holds files timmx did not make ({shown}): name a new or "
        "empty folder, or move them out first"
    )


def _not_made_by(path: Path, backend: Backend) -> list[str] | None:
    """None when `backend` made `path`; else the files that show otherwise (relative to its
    parent; an empty list for a file, or a folder only its content rule could have accepted)."""
    if path.is_dir():
        files = _files_in(path)
        if not files:
            return None  # an empty folder: nothing to lose
        listed = reported_files(path, backend)
        if listed is not None:
            strangers = sorted(f for f in files if f not in listed)
            if not strangers:
                return None
        elif backend.owns_existing(path):
            return None
        else:
            strangers = sorted(files)
        return strangers
    if not path.is_file():
        return []  # a FIFO, a device: nothing an export writes
    listed = reported_files(path, backend)
    if (listed is not None and path.name in listed) or backend.owns_existing(path):
        return None
    return []


def _side_file_is_ours(artifact: Path, side: Path, backend: Backend) -> bool:
    """A side file is replaced with its artifact: the report lists it, or it sits beside an
    artifact that is this backend's own."""
    if not side.is_file():
        return False
    listed = reported_files(artifact, backend)
    if listed is not None:
        return side.name in listed
    return artifact.is_file() and backend.owns_existing(artifact)


def _files_in(folder: Path) -> list[str]:
    """Every file and link under `folder`, relative to its parent (as reports list them)."""
    found = []
    for parent, folders, files in os.walk(folder):
        for name in [*files, *(f for f in folders if Path(parent, f).is_symlink())]:
            found.append(Path(parent, name).relative_to(folder.parent).as_posix())
    return found


def reported_files(artifact: Path, backend: Backend) -> set[str] | None:
    """The files that `artifact`'s report says this backend wrote (relative to its folder); None
    when there is no readable report of this backend beside it."""
    report = artifact.with_name(artifact.name + ".json")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
        if data["job"]["backend"] != backend.name:
            return None
        return {str(entry["path"]) for entry in data["artifacts"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
