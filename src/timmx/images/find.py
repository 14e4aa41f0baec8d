"""Find the image a toolchain runs in: present, pulled from a registry, or built.

Nothing is rebuilt when an image with the same inputs exists; one with the same recipe and source
built with other settings (a base image or torch index of its own) is used as well.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

from timmx.errors import DockerError, first_line
from timmx.images.build import Line, build_image, ignore_line
from timmx.images.identity import (
    BUILD_FIELDS,
    LABEL_CONTENT,
    LABEL_TOOLCHAIN,
    BuildSettings,
    ImageIdentity,
    identify,
)
from timmx.images.recipes import get_recipe

# Shows one pull or build: entered around it, yields what each line of its output goes to.
Stage = Callable[
    [Literal["pull", "build"], ImageIdentity, BuildSettings], AbstractContextManager[Line]
]


@dataclass(frozen=True)
class Found:
    ref: str
    id: str
    exact: bool  # False: same recipe and source, built with other settings
    how: Literal["present", "pulled", "built"] = "present"


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


def pull_image(client, identity: ImageIdentity, on_line: Line = ignore_line) -> Found | None:
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
    return Found(identity.ref, image.id, True, "pulled")


def ensure_image(
    client,
    toolchain: str,
    settings: BuildSettings,
    build: bool = True,
    notice: Line = ignore_line,
    on_line: Line = ignore_line,
    *,
    exact_only: bool = False,
    rebuild: bool = False,
    nocache: bool = False,
    stage: Stage | None = None,
) -> Found:
    """The image to run `toolchain` in: present, pulled, or built (when `build` allows).

    `exact_only` passes over an image built with other settings; `rebuild` builds whatever is
    present (with no layer cache: `nocache`). `stage` shows the pull and the build, each line of
    their output going where it yields (`on_line` without it); a build that follows a pull
    means the registry did not have the image. The answer's `how` says which of the three it was.
    """
    recipe = get_recipe(toolchain)
    settings = effective_settings(client, toolchain, settings)
    identity = identify(recipe, settings)
    stage = stage or (lambda *_: nullcontext(on_line))
    if not rebuild:
        found = find_image(client, identity)
        if found is not None and (found.exact or not exact_only):
            return found
        if settings.registry:
            with stage("pull", identity, settings) as line:
                pulled = pull_image(client, identity, line)
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
    with stage("build", identity, settings) as line:
        image_id = build_image(client, recipe, settings, identity, line, nocache=nocache)
    return Found(identity.ref, image_id, True, "built")
