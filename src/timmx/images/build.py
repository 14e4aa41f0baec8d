"""Find, build, pull, list and remove the toolchain images.

A build assembles a small context (the recipe, the shared files it names, an optional torch wheel
folder, timmx's own wheel) and streams the engine's output line by line. Nothing is rebuilt when
an image with the same inputs exists; a failure names its step and last lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timmx import __version__
from timmx.errors import DockerError, first_line
from timmx.images.identity import (
    BUILD_FIELDS,
    LABEL_CONTENT,
    LABEL_TOOLCHAIN,
    BuildSettings,
    ImageIdentity,
    identify,
)
from timmx.images.recipes import Recipe, all_recipes, get_recipe
from timmx.images.source import write_wheel

Line = Callable[[str], None]


def _ignore(_: str) -> None:
    pass


@dataclass(frozen=True)
class Found:
    ref: str
    id: str
    exact: bool  # False: same recipe and source, built with other settings


def find_image(client, identity: ImageIdentity) -> Found | None:
    """The exact image, or one with the same recipe and source built with other settings."""
    from docker.errors import ImageNotFound

    try:
        image = client.images.get(identity.ref)
        return Found(identity.ref, image.id, True)
    except ImageNotFound:
        pass
    labels = [f"{LABEL_TOOLCHAIN}={identity.toolchain}", f"{LABEL_CONTENT}={identity.content_hash}"]
    candidates = [i for i in client.images.list(filters={"label": labels}) if i.tags]
    if not candidates:
        return None
    newest = max(candidates, key=lambda i: i.attrs.get("Created", ""))
    return Found(newest.tags[0], newest.id, False)


def effective_settings(client, toolchain: str, settings: BuildSettings) -> BuildSettings:
    """Settings nobody chose follow the newest image of the toolchain: a team that built with
    its own base image or torch index keeps them for rebuilds after a source or pin change."""
    if settings.chosen.issuperset(BUILD_FIELDS):
        return settings
    images = [i for i in toolchain_images(client, toolchain) if i.tags]
    images = images or [i for i in toolchain_images(client) if i.tags]  # another toolchain's
    if not images:
        return settings
    newest = max(images, key=lambda i: i.attrs.get("Created", ""))
    labels = newest.attrs.get("Config", {}).get("Labels") or {}
    return settings.follow(labels)


def toolchain_images(client, toolchain: str | None = None) -> list[Any]:
    label = LABEL_TOOLCHAIN if toolchain is None else f"{LABEL_TOOLCHAIN}={toolchain}"
    return client.images.list(filters={"label": label})


def pull_image(client, identity: ImageIdentity, on_line: Line = _ignore) -> Found | None:
    """Pull the exact tag from the registry prefix; None when it is not there."""
    from docker.errors import APIError, NotFound

    on_line(f"pulling {identity.ref}")
    try:
        for chunk in client.api.pull(
            identity.repository, tag=identity.tag, stream=True, decode=True
        ):
            if "error" in chunk:
                on_line(f"pull failed: {chunk['error']}")
                return None
            status = chunk.get("status")
            if status and "progress" not in chunk:
                on_line(f"{status} {chunk.get('id', '')}".strip())
        image = client.images.get(identity.ref)
    except (APIError, NotFound) as exc:
        on_line(f"pull failed: {first_line(exc)}")
        return None
    return Found(identity.ref, image.id, True)


def ensure_image(
    client,
    toolchain: str,
    settings: BuildSettings,
    build: bool = True,
    notice: Line = _ignore,
    on_line: Line = _ignore,
) -> Found:
    """The image to run `toolchain` in: present, pulled, or built (when `build` allows)."""
    recipe = get_recipe(toolchain)
    settings = effective_settings(client, toolchain, settings)
    identity = identify(recipe, settings)
    found = find_image(client, identity)
    if found is not None:
        return found
    if settings.registry:
        pulled = pull_image(client, identity, on_line)
        if pulled is not None:
            return pulled
    stale = [i for i in toolchain_images(client, toolchain) if i.tags]
    why = (
        f" ({len(stale)} stale timmx-{toolchain} image(s): the recipe or timmx changed)"
        if stale
        else ""
    )
    if not build:
        raise DockerError(
            f"the image {identity.ref} is missing{why}: build it with "
            f"`timmx images build {toolchain}`, or drop --no-build"
        )
    notice(
        f"the image {identity.ref} is missing{why}: building it now, which takes minutes "
        f"(`timmx images build {toolchain}` does it ahead of time)"
    )
    image_id = build_image(client, recipe, settings, identity, on_line)
    return Found(identity.ref, image_id, True)


def build_image(
    client,
    recipe: Recipe,
    settings: BuildSettings,
    identity: ImageIdentity | None = None,
    on_line: Line = _ignore,
    nocache: bool = False,
) -> str:
    """Build `recipe` with the engine; return the image id. DockerError names the failing step."""
    identity = identity or identify(recipe, settings)
    log_path = Path(tempfile.gettempdir()) / f"timmx-build-{recipe.name}-{identity.tag}.log"
    tail: deque[str] = deque(maxlen=40)
    step = "the start"
    image_id = None
    with (
        tempfile.TemporaryDirectory(prefix=f"timmx-build-{recipe.name}.") as tmp,
        log_path.open("w") as log,
    ):
        context = Path(tmp)
        assemble_context(recipe, settings, context)
        build_args = {
            **settings.build_args(),
            "TIMMX_VERSION": __version__,
            "TIMMX_REVISION": source_revision(recipe.folder),
            "TIMMX_LOCK_HASH": identity.lock_hash,
            "TIMMX_TOOLCHAIN": recipe.name,
        }
        try:
            stream = client.api.build(
                path=str(context),
                tag=identity.ref,
                buildargs=build_args,
                labels={**identity.labels(), **settings.labels()},
                network_mode="host",
                rm=True,
                forcerm=True,
                nocache=nocache,
                decode=True,
                timeout=None,
            )
            for chunk in stream:
                if "error" in chunk:
                    _raise_build_error(identity, step, str(chunk["error"]), tail, log_path, log)
                if "aux" in chunk and isinstance(chunk["aux"], dict):
                    image_id = chunk["aux"].get("ID", image_id)
                text = chunk.get("stream") or chunk.get("status") or ""
                for line in text.splitlines():
                    line = line.rstrip()
                    if not line:
                        continue
                    log.write(line + "\n")
                    if line.startswith("Step "):
                        step = line
                    tail.append(line)
                    on_line(line)
        except DockerError:
            raise
        except Exception as exc:  # the engine went away, a bad context...
            _raise_build_error(identity, step, first_line(exc), tail, log_path, log)
        except BaseException:  # Ctrl-C: not a failure to keep a log of
            log_path.unlink(missing_ok=True)
            raise
    log_path.unlink(missing_ok=True)  # kept only when the build failed
    if image_id is None:
        image_id = client.images.get(identity.ref).id
    return image_id


def _raise_build_error(identity, step, error, tail, log_path, log) -> None:
    log.write(f"ERROR: {error}\n")
    log.flush()
    lines = [line for line in tail if not line.startswith(("Step ", " ---> ", "Removing"))]
    last = " | ".join(line.strip() for line in lines[-3:])
    where = step.removeprefix("Step ")
    hint = ""
    if where.split(" : ", 1)[-1].startswith("FROM"):
        hint = (
            " (the base image is not available: pass --base-image or set TIMMX_BASE_IMAGE, "
            "e.g. to a local one made by `timmx images base`)"
        )
    raise DockerError(
        f"building {identity.ref} failed at step {where}: {first_line(Exception(error))}{hint}"
        f"; last lines: {last or '-'} (full log: {log_path})"
    )


def assemble_context(recipe: Recipe, settings: BuildSettings, context: Path) -> None:
    for name, path in recipe.files.items():
        shutil.copyfile(path, context / name)
    wheels = context / "torch-wheels"
    wheels.mkdir()
    (wheels / ".keep").write_text("")  # an empty folder: the COPY layer is the same everywhere
    for wheel in settings.wheel_files():
        try:
            os.link(wheel, wheels / wheel.name)
        except OSError:
            shutil.copyfile(wheel, wheels / wheel.name)
    dist = context / "dist"
    dist.mkdir()
    write_wheel(dist)


def source_revision(folder: Path) -> str:
    """The git commit of the checkout the recipes come from; 'unknown' outside a checkout."""
    try:
        answer = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return answer.stdout.strip() if answer.returncode == 0 else "unknown"


@dataclass(frozen=True)
class ImageRow:
    toolchain: str
    ref: str
    size: int | None
    status: str  # present, missing, stale
    created: str = ""


def image_rows(client, settings: BuildSettings, names: list[str] | None = None) -> list[ImageRow]:
    """One row per toolchain (present or missing), plus one per stale image."""
    rows = []
    for recipe in _selected(names):
        identity = identify(recipe, effective_settings(client, recipe.name, settings))
        found = find_image(client, identity)
        current = {found.id} if found else set()
        if found:
            image = client.images.get(found.id)
            rows.append(
                ImageRow(
                    recipe.name, found.ref, image.attrs.get("Size"), "present", _created(image)
                )
            )
        else:
            rows.append(ImageRow(recipe.name, identity.ref, None, "missing"))
        for image in toolchain_images(client, recipe.name):
            if image.id in current:
                continue
            ref = image.tags[0] if image.tags else image.short_id
            rows.append(
                ImageRow(recipe.name, ref, image.attrs.get("Size"), "stale", _created(image))
            )
    return rows


def remove_images(
    client,
    names: list[str] | None = None,
    stale_only: bool = False,
    settings: BuildSettings | None = None,
) -> list[str]:
    """Remove the toolchains' images (only the stale ones with `stale_only`); return their refs."""
    from docker.errors import APIError

    settings = settings or BuildSettings.resolve()
    removed = []
    for row in image_rows(client, settings, names):
        if row.status == "missing" or (stale_only and row.status != "stale"):
            continue
        try:
            client.images.remove(row.ref, force=False, noprune=False)
        except APIError as exc:
            raise DockerError(f"cannot remove {row.ref}: {first_line(exc)}") from None
        removed.append(row.ref)
    return removed


def _selected(names: list[str] | None) -> list[Recipe]:
    return [get_recipe(n) for n in names] if names else all_recipes()


def _created(image) -> str:
    created = image.attrs.get("Created", "")
    return created[5:16].replace("T", " ") if created else ""
