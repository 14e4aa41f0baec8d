"""`timmx clean`: remove what killed exports left: staging and exchange folders and export
containers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from timmx.cleanup import (
    engine_is_local,
    find_stale_staging,
    looks_like_exchange,
    stale_containers,
)
from timmx.cli import console
from timmx.errors import DockerError, InvalidInputError, first_line


def clean_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders to look in, with their subfolders (default: the current folder).",
            metavar="PATH",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    containers: Annotated[
        bool,
        typer.Option(
            "--containers/--no-containers", help="Also remove export containers whose CLI is gone."
        ),
    ] = True,
) -> None:
    """Remove staging and exchange folders and export containers left by killed exports and
    builds (their owner process is gone); what is in use, or from another host or pid namespace,
    is kept."""
    roots = paths or [Path(".")]
    for root in roots:
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a folder"
            raise InvalidInputError(f"{root} {what}: name folders to clean, or none for '.'")
    verb = "would remove" if dry_run else "removed"
    count = 0
    for folder, owner in find_stale_staging(roots):
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
        count += 1
        kind = "exchange folder" if looks_like_exchange(folder.name) else "staging folder"
        console.out.print(
            f"{verb} {kind} {console.escape(str(folder))} (pid {owner.pid} is gone)",
            soft_wrap=True,
        )
    if containers:
        count += _clean_containers(verb, dry_run)
    if not count:
        console.out.print("nothing to clean")


def _clean_containers(verb: str, dry_run: bool) -> int:
    from timmx.images.engine import connect

    try:
        client = connect()
    except DockerError as exc:
        console.err.print(f"containers: skipped, {console.escape(exc.message)}", soft_wrap=True)
        return 0
    try:
        if not engine_is_local(client):
            where = console.escape(str(client.api.base_url))
            console.err.print(
                f"containers: skipped, the engine at {where} is not on this host", soft_wrap=True
            )
            return 0
        from docker.errors import APIError, NotFound

        count = 0
        stale, unowned = stale_containers(client)
        if unowned:
            names = ", ".join(c.name for c in unowned[:3]) + (" ..." if unowned[3:] else "")
            console.err.print(
                f"containers: kept {len(unowned)} with no owner record ({names}; made by an older "
                "timmx): remove them with `docker rm -f` once no export runs",
                soft_wrap=True,
            )
        for container, owner in stale:
            if not dry_run:
                try:
                    container.remove(force=True)
                except NotFound:
                    continue  # removed meanwhile
                except APIError as exc:
                    reason = console.escape(first_line(exc))
                    console.err.print(f"containers: cannot remove {container.name}: {reason}")
                    continue
            count += 1
            console.out.print(
                f"{verb} container {container.name} ({container.status}, pid {owner.pid} is gone)",
                soft_wrap=True,
            )
        return count
    finally:
        client.close()
