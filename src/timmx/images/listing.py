"""List the toolchains' images (present, missing or stale) and remove them."""

from __future__ import annotations

from dataclasses import dataclass

from timmx.errors import DockerError, first_line
from timmx.images.find import effective_settings, find_image, toolchain_images
from timmx.images.identity import BuildSettings, identify
from timmx.images.recipes import Recipe, all_toolchains, get_recipe


@dataclass(frozen=True)
class ImageRow:
    toolchain: str
    ref: str
    size: int | None
    status: str  # present, missing, stale
    created: str = ""
    base: str = ""  # a variant's built-in toolchain


def image_rows(client, settings: BuildSettings, names: list[str] | None = None) -> list[ImageRow]:
    """One row per toolchain (present or missing), plus one per stale image."""
    rows = []
    for recipe in _selected(names):
        identity = identify(recipe, effective_settings(client, recipe.name, settings))
        base = _base(recipe.name)
        found = find_image(client, identity)
        current = {found.id} if found else set()
        if found:
            image = client.images.get(found.id)
            rows.append(
                ImageRow(
                    recipe.name,
                    found.ref,
                    image.attrs.get("Size"),
                    "present",
                    _created(image),
                    base,
                )
            )
        else:
            rows.append(ImageRow(recipe.name, identity.ref, None, "missing", base=base))
        for image in toolchain_images(client, recipe.name):
            if image.id in current:
                continue
            ref = image.tags[0] if image.tags else image.short_id
            size = image.attrs.get("Size")
            rows.append(ImageRow(recipe.name, ref, size, "stale", _created(image), base))
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
    return [get_recipe(n) for n in names] if names else all_toolchains()


def _base(name: str) -> str:
    from timmx.toolchains import registered

    variant = registered(name)
    return variant.base if variant else ""


def _created(image) -> str:
    created = image.attrs.get("Created", "")
    return created[5:16].replace("T", " ") if created else ""
