"""Image recipes: `images/<toolchain>/` holds the toolchain's lock files.

A new toolchain is a new folder with a `requirements.lock`. Every recipe builds with the one
Dockerfile in `images/_shared/` unless its folder has its own; files in `images/_shared/` (the
torch and timm locks, the lock check) join a recipe's build context when the Dockerfile names
them and the recipe has no file of that name (a toolchain that needs another torch brings its
own `torch.lock`). The recipes are found in
$TIMMX_IMAGES_DIR, in an installed timmx (packaged as `timmx/_recipes`), or in the checkout.

A toolchain variant (`[toolchains.<name>]` in the build file, see timmx.toolchains) is its base
toolchain's recipe with the variant's locks from `timmx-locks/` in place of the base's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from timmx.errors import InvalidInputError
from timmx.images.source import PACKAGED_RECIPES, package_dir

SHARED = "_shared"
LOCK_SUFFIXES = (".lock", ".constraints")
TOOLCHAIN_LOCK = "requirements.lock"


@dataclass(frozen=True)
class Recipe:
    name: str
    folder: Path
    files: dict[str, Path]  # build-context name -> file, the Dockerfile included

    @property
    def lock_files(self) -> dict[str, Path]:
        return {n: p for n, p in self.files.items() if n.endswith(LOCK_SUFFIXES)}


def recipes_root() -> Path:
    override = os.environ.get("TIMMX_IMAGES_DIR")
    if override:
        return Path(override)
    here = package_dir()
    for candidate in (here / PACKAGED_RECIPES, here.parent.parent / "images"):
        if candidate.is_dir():
            return candidate
    raise InvalidInputError(
        "no image recipes found: set TIMMX_IMAGES_DIR to a checkout's images/ folder"
    )


def all_recipes(root: Path | None = None) -> list[Recipe]:
    root = root or recipes_root()
    return [
        load_recipe(folder)
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        and not folder.name.startswith(("_", "."))
        and ((folder / "Dockerfile").is_file() or (folder / TOOLCHAIN_LOCK).is_file())
    ]


def get_recipe(name: str, root: Path | None = None) -> Recipe:
    """A built-in toolchain's recipe, or a variant's (from the build file: see timmx.toolchains)
    once its lock is in place and up to date."""
    from timmx.toolchains import check_lock, registered

    recipes = {r.name: r for r in all_recipes(root)}
    if name not in recipes:
        variant = registered(name)
        if variant is not None:
            check_lock(variant)
            return variant_recipe(variant, recipes[variant.base])
        raise InvalidInputError(
            f"no image recipe '{name}': choose one of {', '.join(recipes) or 'none'} (or a "
            "[toolchains.<name>] variant of the timmx.toml here)"
        )
    return recipes[name]


def variant_recipe(variant, base: Recipe) -> Recipe:
    """The base toolchain's recipe with the variant's locks in place of its own."""
    files = {**base.files, **variant.lock_files()}
    return Recipe(
        name=variant.name, folder=variant.lock_path.parent, files=dict(sorted(files.items()))
    )


def all_toolchains(root: Path | None = None) -> list[Recipe]:
    """The built-in recipes, then the variants the build file here declares."""
    from timmx.toolchains import registered_variants

    return [*all_recipes(root), *(get_recipe(v.name, root) for v in registered_variants())]


def load_recipe(folder: Path) -> Recipe:
    files = {
        p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    shared = folder.parent / SHARED
    files.setdefault("Dockerfile", shared / "Dockerfile")
    dockerfile = files["Dockerfile"].read_text()
    if shared.is_dir():
        for path in sorted(shared.iterdir()):
            if path.is_file() and path.name in dockerfile and path.name not in files:
                files[path.name] = path
    return Recipe(name=folder.name, folder=folder, files=dict(sorted(files.items())))
