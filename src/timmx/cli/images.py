"""`timmx images`: build, list and remove the pinned backend images; make a local base image."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from timmx.cli import console

images_app = typer.Typer(
    help="Build, list and remove the pinned backend images.", no_args_is_help=True
)


def _names(help: str) -> object:
    return Annotated[list[str] | None, typer.Argument(help=help, show_default=False)]


# The parameters several commands share, declared once. Their defaults come from the
# environment when unset, so no default is shown.
Names = _names(
    "Toolchains (images/<name>/, or \\[toolchains.<name>] variants of the timmx.toml here); all "
    "of them when absent."
)
PushNames = _names(
    "Toolchains (images/<name>/ or variants), or `base` for the base image; all toolchains when "
    "absent."
)
LockNames = _names(
    "Toolchains: built-in (images/<name>/), _shared (the shared timm lock) or "
    "\\[toolchains.<name>] variants of the timmx.toml here; all of them when absent."
)
BaseImage = Annotated[
    str | None,
    typer.Option(
        "--base-image",
        help="Base image (default: $TIMMX_BASE_IMAGE, else python:3.11-slim-bookworm).",
        show_default=False,
    ),
]
TorchIndex = Annotated[
    str | None,
    typer.Option(
        "--torch-index-url",
        help="Index torch comes from (default: $TIMMX_TORCH_INDEX_URL, else the PyTorch CPU "
        "index).",
        show_default=False,
    ),
]
TorchWheels = Annotated[
    Path | None,
    typer.Option(
        "--torch-wheels",
        help="A local folder of torch/torchvision wheels (default: $TIMMX_TORCH_WHEELS).",
        show_default=False,
    ),
]
Registry = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Registry prefix, e.g. ghcr.io/team: pull prebuilt images (default: $TIMMX_REGISTRY).",
        show_default=False,
    ),
]


def _variants() -> None:
    """Make the toolchain variants of the build file here (as `timmx build` finds it) known."""
    from timmx.toolchains import load_variants

    load_variants()


def _recipes(names: list[str] | None):
    """The named toolchains (built-in or variants), else all of them."""
    from timmx.images.recipes import all_toolchains, get_recipe

    _variants()
    return [get_recipe(n) for n in names] if names else all_toolchains()


def _settings(base_image, torch_index_url, torch_wheels, registry):
    from timmx.images.identity import BuildSettings

    return BuildSettings.resolve(base_image, torch_index_url, torch_wheels, registry)


def _gb(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e9:.2f} GB"


@images_app.command("build")
def build(
    names: Names = None,
    base_image: BaseImage = None,
    torch_index_url: TorchIndex = None,
    torch_wheels: TorchWheels = None,
    registry: Registry = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build even when the image is present.")
    ] = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Build every layer anew (implies --rebuild).")
    ] = False,
    push: Annotated[
        bool, typer.Option("--push", help="Push the images to the --registry prefix.")
    ] = False,
) -> None:
    """Build the images that are missing; present ones with unchanged inputs are left alone."""
    from timmx.images.engine import connect
    from timmx.images.find import ensure_image

    settings = _settings(base_image, torch_index_url, torch_wheels, registry)
    recipes = _recipes(names)
    client = connect()
    for recipe in recipes:
        shown = _Shown()
        found = ensure_image(
            client,
            recipe.name,
            settings,
            exact_only=True,
            rebuild=rebuild or no_cache,
            nocache=no_cache,
            stage=shown.stage,
        )
        if found.how == "present":
            console.err.print(f"[green]up to date[/] {found.ref}")
        elif found.how == "pulled":
            console.err.print(f"[green]pulled[/] {found.ref}")
        else:
            size = client.images.get(found.id).attrs.get("Size")
            console.err.print(
                f"[green]built[/] {found.ref} ({_gb(size)}) in "
                f"{time.monotonic() - shown.started:.0f} s"
            )
        if push:
            _push(client, found.ref, settings.registry)


class _Shown:
    """One image's pull and build as they go: a spinner, and each Step line of a build."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.pulled = False  # tried: a build after it means the registry lacks the image

    @contextmanager
    def stage(self, kind: str, identity, settings) -> Iterator[Callable[[str], None]]:
        if kind == "pull":
            self.pulled = True
            with console.err.status(f"pulling {identity.ref}", spinner="dots") as status:
                yield lambda line: status.update(f"pulling: {line}")
            return
        if self.pulled:
            console.err.print(f"[yellow]not in the registry[/] {identity.ref}: building it")
        self.started = time.monotonic()
        console.err.print(f"[bold]building[/] {identity.ref} (base {settings.base_image})")
        with console.err.status(f"building {identity.ref}", spinner="dots") as status:

            def show(line: str) -> None:
                if line.startswith("Step "):
                    console.err.print(f"[dim]{console.escape(line[:160])}[/]", soft_wrap=True)
                elapsed = time.monotonic() - self.started
                status.update(f"[{elapsed:4.0f} s] {console.escape(line.strip()[:100])}")

            yield show


def _push(client, ref: str, registry: str | None) -> str:
    from timmx.errors import InvalidInputError
    from timmx.images.registry import push_image

    if not registry:
        raise InvalidInputError("pushing needs --registry HOST[:PORT]/PREFIX (or $TIMMX_REGISTRY)")
    with console.err.status(f"pushing {ref}", spinner="dots") as status:
        digest = push_image(client, ref, registry, lambda line: status.update(f"pushing: {line}"))
    console.err.print(f"[green]pushed[/] {digest}")
    return digest


@images_app.command("push")
def push(
    names: PushNames = None,
    registry: Registry = None,
    base_image: BaseImage = None,
    torch_index_url: TorchIndex = None,
    torch_wheels: TorchWheels = None,
) -> None:
    """Push the present images to a registry and print each one's digest: builds then record
    it, and `timmx build --locked` elsewhere pulls exactly those images by it."""
    from timmx.images.engine import connect
    from timmx.images.find import ensure_image

    settings = _settings(base_image, torch_index_url, torch_wheels, None)
    target = registry or _settings(None, None, None, None).registry
    _variants()
    wanted = names or [recipe.name for recipe in _recipes(None)]
    client = connect()
    digests = {}
    for name in wanted:
        if name == "base":
            ref = settings.base_image
        else:
            ref = ensure_image(client, name, settings, build=False).ref
        digests[name] = _push(client, ref, target)
    console.out.print_json(json.dumps(digests))


@images_app.command("pull")
def pull(
    names: Names = None,
    registry: Registry = None,
    base_image: BaseImage = None,
    torch_index_url: TorchIndex = None,
    torch_wheels: TorchWheels = None,
) -> None:
    """Pull this timmx's images from a registry (instead of building them); present ones are
    left alone."""
    from timmx.errors import DockerError, InvalidInputError
    from timmx.images.engine import connect
    from timmx.images.find import ensure_image

    settings = _settings(base_image, torch_index_url, torch_wheels, registry)
    if not settings.registry:
        raise InvalidInputError("pulling needs --registry HOST[:PORT]/PREFIX (or $TIMMX_REGISTRY)")
    recipes = _recipes(names)
    client = connect()
    for recipe in recipes:
        shown = _Shown()
        try:
            found = ensure_image(
                client, recipe.name, settings, build=False, exact_only=True, stage=shown.stage
            )
        except DockerError:
            raise DockerError(
                f"the {recipe.name} image of this timmx is not in {settings.registry}: push it "
                f"there (`timmx images push {recipe.name} --registry {settings.registry}`) or "
                f"build it here (`timmx images build {recipe.name}`)"
            ) from None
        word = "pulled" if found.how == "pulled" else "up to date"
        console.err.print(f"[green]{word}[/] {found.ref}")


@images_app.command("list")
def list_images(
    names: Names = None,
    base_image: BaseImage = None,
    torch_index_url: TorchIndex = None,
    torch_wheels: TorchWheels = None,
    registry: Registry = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Each toolchain's image: name, tag, size, and present / missing / stale."""
    from rich.table import Table

    from timmx.images.engine import connect
    from timmx.images.listing import image_rows

    settings = _settings(base_image, torch_index_url, torch_wheels, registry)
    _variants()
    rows = image_rows(connect(), settings, names)
    if json_out:
        payload = [
            {
                "name": r.toolchain,
                "from": r.base,
                "image": r.ref,
                "size": r.size,
                "status": r.status,
                "created": r.created,
            }
            for r in rows
        ]
        console.out.print_json(json.dumps(payload))
        return
    table = Table()
    for column in ("name", "from", "image", "size", "status", "created"):
        table.add_column(column, no_wrap=column in ("image", "size"))
    colours = {"present": "green", "missing": "yellow", "stale": "dim"}
    for r in rows:
        status = f"[{colours[r.status]}]{r.status}[/]"
        table.add_row(r.toolchain, r.base or "-", r.ref, _gb(r.size), status, r.created)
    console.out.print(table)


@images_app.command("rm")
def remove(
    names: Names = None,
    stale: Annotated[bool, typer.Option("--stale", help="Only the stale images.")] = False,
    registry: Registry = None,
) -> None:
    """Remove the toolchains' images (present and stale), or only the stale ones."""
    from timmx.images.engine import connect
    from timmx.images.listing import remove_images

    settings = _settings(None, None, None, registry)
    _variants()
    removed = remove_images(connect(), names, stale_only=stale, settings=settings)
    for ref in removed:
        console.err.print(f"removed {ref}")
    if not removed:
        console.err.print("nothing to remove")


@images_app.command("base")
def base(
    ca_bundle: Annotated[
        Path | None,
        typer.Option(
            "--ca-bundle", help="A CA bundle to trust in the image (networks that intercept TLS)."
        ),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Debian mirror (default: this machine's apt sources, else deb.debian.org).",
        ),
    ] = None,
    tag: Annotated[
        str, typer.Option("--tag", help="Name of the base image.")
    ] = "timmx-base:bookworm",
    force: Annotated[bool, typer.Option("--force", help="Rebuild when it exists.")] = False,
) -> None:
    """Build a minimal Debian bookworm + Python 3.11 base image, for machines with no registry."""
    from docker.errors import ImageNotFound

    from timmx.images.base import build_base
    from timmx.images.engine import connect

    client = connect()
    try:
        client.images.get(tag)
        exists = True
    except ImageNotFound:
        exists = False
    if exists and not force:
        console.err.print(f"[green]present[/] {tag} (--force rebuilds it)")
        return
    started = time.monotonic()
    with console.err.status(f"building {tag}", spinner="dots") as status:

        def show(line: str) -> None:
            if not line.startswith("I: "):
                console.err.print(f"[dim]{console.escape(line)}[/]", soft_wrap=True)
            status.update(console.escape(line[:100]))

        build_base(client, tag, mirror, ca_bundle, show)
    size = client.images.get(tag).attrs.get("Size")
    console.err.print(
        f"[green]built[/] {tag} ({_gb(size)}) in {time.monotonic() - started:.0f} s; "
        f"use it with --base-image {tag} or TIMMX_BASE_IMAGE={tag}"
    )


@images_app.command("lock")
def lock(
    names: LockNames = None,
    upgrade: Annotated[
        bool,
        typer.Option("--upgrade", help="Take the newest releases the pins allow (not the lock's)."),
    ] = False,
) -> None:
    """Resolve each toolchain's exact pins with sha256 hashes (uv, for the images' Python and
    platform, on the shared torch and timm locks) and write its lock: a built-in's in
    images/<name>/, a variant's in timmx-locks/ beside the build file (commit it)."""
    from timmx.images.lock import SHARED_NAME, lock_toolchain, read_pins
    from timmx.images.recipes import all_recipes
    from timmx.toolchains import registered, registered_variants

    _variants()
    builtin = [SHARED_NAME, *(r.name for r in all_recipes())]
    wanted = names or builtin + [v.name for v in registered_variants()]
    for name in wanted:
        with console.err.status(f"locking {name}", spinner="dots"):
            written = lock_toolchain(name, upgrade=upgrade)
        variant = registered(name)
        pinned = {p.name: p.version for p in read_pins(written[0])}
        versions = [f"{n}=={pinned[n]}" for n, _ in variant.pins if n in pinned] if variant else []
        where = ", ".join(_shown_path(path) for path in written)
        summary = ", ".join([f"{len(pinned)} packages", *versions])
        console.err.print(f"[green]locked[/] {name}: {where} ({summary})")


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
