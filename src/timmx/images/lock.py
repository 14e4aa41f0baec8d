"""`timmx images lock`: a toolchain's exact pins, with sha256 hashes, resolved by uv.

uv resolves for the images' Python (3.11) and platform (manylinux with bookworm's glibc 2.36, on
this machine's architecture) against the locks of the layers below the toolchain's: the shared
torch and timm locks, or a torch of its own when a variant pins `torch`. The toolchain's main
packages (its backends' `requires`) are the roots; the lock it replaces is uv's preference, so
re-locking changes nothing that need not change (`upgrade` drops that preference: newest
releases within the pins). What the lower layers install is left out of the lock; the rest is
written one line per package with every hash of its release, for `pip install
--require-hashes`.

A built-in toolchain's lock is `images/<name>/requirements.lock` (its leading comments kept); a
variant's is `timmx-locks/<name>.lock` beside the build file, with `<name>.torch.lock` and
`<name>.torch.constraints` when it pins torch. A torch layer's two files (the shared one's, with
`timmx images lock _shared`, and a toolchain's own) carry the hashes of PyPI's wheels: an image
whose torch comes from PyPI installs it `--require-hashes` too. From the PyTorch CPU index or a
wheel folder (other files, other hashes) it installs by version, hashes aside.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from timmx.errors import InvalidInputError
from timmx.images.recipes import TOOLCHAIN_LOCK, Recipe, get_recipe
from timmx.toolchains import (
    HEADER_FROM,
    HEADER_PINS,
    TORCH_PAIR,
    Variant,
    canonical,
    check_supported,
    registered,
)

PYTHON_VERSION = "3.11"
GLIBC = "2_36"  # Debian bookworm, the base image's
_MARK = "# lock: "
_OVER = "# installed over the layers below: "
# What only some torch builds pull in (PyPI's CUDA build): the torch layer's constraints.
_CUDA = re.compile(r"(nvidia-|cuda-|triton$)")
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass(frozen=True)
class Pinned:
    name: str  # canonical
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        """One line per package (a bump is a one-line diff): `name==version --hash=...`."""
        if not self.hashes:
            return f"{self.name}=={self.version}"
        return " ".join([f"{self.name}=={self.version}", *(f"--hash={h}" for h in self.hashes)])


def python_platform() -> str:
    machine = {"arm64": "aarch64", "amd64": "x86_64"}.get(platform.machine().lower())
    return f"{machine or platform.machine().lower()}-manylinux_{GLIBC}"


def uv_binary() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).is_file():
        raise InvalidInputError(
            "`timmx images lock` resolves with uv, which is not installed here: pip install uv"
        )
    return found


def main_packages(toolchain: str) -> list[str]:
    """The roots of a toolchain's resolution: its backends' packages, less the lower layers'."""
    from timmx.backends import all_backends

    roots: dict[str, None] = {}
    for backend in all_backends():
        if backend.toolchain == toolchain:
            roots.update(dict.fromkeys(canonical(n) for n in backend.requires))
    return [name for name in roots if name not in ("torch", "timm")]


def supported_ranges(toolchain: str) -> list[str]:
    """Its backends' `supported` ranges: a lock never picks a release their code does not take
    (tensorflowjs 3.x fits the shared layers; the tfjs backend needs 4.22)."""
    from timmx.backends import all_backends

    return [r for b in all_backends() if b.toolchain == toolchain for r in b.supported]


def read_pins(path: Path) -> list[Pinned]:
    """The `name==version` entries of a lock, with their `--hash=` options."""
    pinned: list[Pinned] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _PIN.match(line)
        if match:
            pinned.append(Pinned(canonical(match[1]), match[2], ()))
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        if hashes and pinned:
            last = pinned[-1]
            pinned[-1] = Pinned(last.name, last.version, last.hashes + hashes)
    return pinned


SHARED_NAME = "_shared"  # the shared timm layer's lock, images/_shared/timm.lock


def lock_shared(root: Path) -> list[Path]:
    """Hash the shared torch layer's pins, and the shared timm layer's (chosen by hand: see the
    toolchains' notes) within them; refused when they miss a dependency."""
    shared = root / SHARED_NAME
    path = shared / "timm.lock"
    layers = [shared / "torch.lock", shared / "torch.constraints"]
    current = read_pins(path)
    pinned = _resolve([f"{p.name}=={p.version}" for p in current], layers, [])
    below = {p.name for layer in layers for p in read_pins(layer)}
    wanted = {p.name for p in current}
    extra = sorted(p.name for p in pinned if p.name not in below | wanted)
    if extra:
        raise InvalidInputError(
            f"{path} misses {', '.join(extra)}, which its packages need: pin them there"
        )
    kept = [line for line in _comments(path) if not line.startswith(_MARK)]
    _write(path, [*kept, _MARK + _made_by(SHARED_NAME)], [p for p in pinned if p.name in wanted])
    return [*lock_torch_layer(*layers, SHARED_NAME), path]


def lock_torch_layer(lock: Path, constraints: Path, name: str) -> list[Path]:
    """Hash a torch layer's pins (`lock`: torch, torchvision and what every build of them needs;
    `constraints`: what only PyPI's CUDA build pulls in) as PyPI's wheels, versions kept."""
    current = read_pins(lock) + read_pins(constraints)
    pinned = _resolve([f"{p.name}=={p.version}" for p in current], [], [])
    changed = {p.name for p in pinned} ^ {p.name for p in current}
    if changed:
        raise InvalidInputError(
            f"{lock} and {constraints} do not pin what torch needs ({', '.join(sorted(changed))}"
            " differ): re-lock them with a toolchain variant that pins torch, then copy its files"
        )
    header = [line for line in _comments(lock) if not line.startswith(_MARK)]
    _write(lock, [*header, _MARK + _made_by(name)], [p for p in pinned if not _CUDA.match(p.name)])
    _write(constraints, _comments(constraints), [p for p in pinned if _CUDA.match(p.name)])
    return [lock, constraints]


def lock_toolchain(name: str, upgrade: bool = False) -> list[Path]:
    """Resolve and write the lock(s) of the toolchain `name`; return the files written."""
    if name == SHARED_NAME:
        from timmx.images.recipes import recipes_root

        return lock_shared(recipes_root())
    variant = registered(name)
    if variant is None:
        recipe = get_recipe(name)
        own = [recipe.folder / n for n in ("torch.lock", "torch.constraints")]
        torch_layer = lock_torch_layer(*own, name) if all(p.is_file() for p in own) else []
        return [*torch_layer, _lock_builtin(recipe, upgrade)]
    return _lock_variant(variant, get_recipe(variant.base), upgrade)


def _lock_builtin(recipe: Recipe, upgrade: bool) -> Path:
    path = recipe.folder / TOOLCHAIN_LOCK
    layers = [recipe.files[n] for n in ("torch.lock", "torch.constraints", "timm.lock")]
    roots = main_packages(recipe.name)
    roots += supported_ranges(recipe.name) if roots else []
    preferred = [path] if path.is_file() and not upgrade else []
    below = {p.name: p.version for layer in layers for p in read_pins(layer)}
    try:
        pinned = _resolve(roots, layers, preferred) if roots else []
    except InvalidInputError as within:
        pinned = _over_the_layers(recipe, roots, layers, preferred, within)
    kept = [line for line in _comments(path) if not line.startswith((_MARK, _OVER))]
    header = [*kept, _MARK + _made_by(recipe.name)]
    over = sorted(
        f"{p.name} {p.version}" for p in pinned if below.get(p.name, p.version) != p.version
    )
    if over:
        header.append(_OVER + ", ".join(over))
    _write(path, header, [p for p in pinned if below.get(p.name) != p.version])
    return path


def _over_the_layers(
    recipe: Recipe, roots: list[str], layers: list[Path], preferred: list[Path], within: Exception
) -> list[Pinned]:
    """A toolchain that needs other versions of what the torch and timm layers pin (tensorflow
    2.19's numpy<2.2): resolved with those pins as preferences, the torch pair and timm kept, so
    its lock installs the few that differ over the shared layers (no torch layer of its own)."""
    fixed = {p.name: p.version for layer in layers for p in read_pins(layer)}
    kept = [f"{n}=={fixed[n]}" for n in (*TORCH_PAIR, "timm") if n in fixed]
    try:
        return _resolve(roots + kept, [], [*preferred, *layers])
    except InvalidInputError:
        raise InvalidInputError(
            f"{recipe.name} does not fit the torch and timm layers ({within}), not even with "
            "other versions of their other packages: give images/"
            f"{recipe.name}/ a torch.lock of its own"
        ) from None


def _lock_variant(variant: Variant, base: Recipe, upgrade: bool) -> list[Path]:
    pins = dict(variant.pins)
    check_supported(variant.base, pins, f"toolchains.{variant.name}")
    timm = base.files["timm.lock"]
    layers = (
        [timm]
        if variant.own_torch
        else [base.files[n] for n in ("torch.lock", "torch.constraints", "timm.lock")]
    )
    roots = [r for r in main_packages(variant.base) if r not in pins]
    if variant.own_torch:
        roots += [n for n in TORCH_PAIR if n not in pins]
    requirements = roots + [f"{n}=={v}" for n, v in variant.pins]
    # uv keeps these versions where they fit: the variant's lock, else its base toolchain's
    current = [p for p in variant.lock_files().values() if p.is_file()]
    below = [base.files[n] for n in ("torch.lock", "torch.constraints")]
    if variant.own_torch:  # another toolchain's torch layer, where it fits, is shared with it
        from timmx.images.recipes import all_recipes

        below += [r.files[n] for r in all_recipes() for n in ("torch.lock", "torch.constraints")]
    preferred = [] if upgrade else current or [base.files[TOOLCHAIN_LOCK], *below]
    pinned = _resolve(requirements, layers, preferred)
    timm_names = {p.name for p in read_pins(timm)}
    header = [
        f"# The {variant.name} toolchain: a variant of the built-in {variant.base} one, for the "
        "build file beside timmx-locks/. Commit it.",
        _MARK + _made_by(variant.name),
        HEADER_FROM + variant.base,
        HEADER_PINS + variant.pins_line,
        "# torch: "
        + (
            f"timmx-locks/{variant.name}.torch.lock"
            if variant.own_torch
            else f"the {variant.base} toolchain's"
        ),
    ]
    if not variant.own_torch:
        below = {p.name for layer in layers for p in read_pins(layer)}
        _write(variant.lock_path, header, [p for p in pinned if p.name not in below])
        for stale in (variant.torch_lock_path, variant.torch_constraints_path):
            stale.unlink(missing_ok=True)
        return [variant.lock_path]
    torch_names = {p.name for p in read_pins(base.files["torch.lock"])} | set(TORCH_PAIR)
    torch_part = [p for p in pinned if p.name in torch_names]
    cuda_part = [p for p in pinned if _CUDA.match(p.name)]
    rest = [p for p in pinned if p not in torch_part and p not in cuda_part]
    shared = _builtin_torch(torch_part)
    if shared is not None:  # that toolchain's torch layer; what differs, this lock installs over it
        lock, constraints, differ = shared
        header[-1] += f" (a copy of images/{lock.parent.name}/torch.lock: its torch layer)"
        variant.torch_lock_path.parent.mkdir(parents=True, exist_ok=True)
        variant.torch_lock_path.write_bytes(lock.read_bytes())
        variant.torch_constraints_path.write_bytes(constraints.read_bytes())
        _write(variant.lock_path, header, [p for p in rest + differ if p.name not in timm_names])
        return [variant.lock_path, variant.torch_lock_path, variant.torch_constraints_path]
    _write(variant.lock_path, header, [p for p in rest if p.name not in timm_names])
    torch_header = [
        f"# torch + torchvision for the {variant.name} toolchain (`timmx images lock "
        f"{variant.name}`), hashed as PyPI's wheels (the CPU index's +cpu ones install by version)."
    ]
    _write(variant.torch_lock_path, torch_header, torch_part)
    _write(
        variant.torch_constraints_path,
        ["# What PyPI's CUDA build of that torch pulls in; a CPU build installs none of them."],
        cuda_part,
    )
    return [variant.lock_path, variant.torch_lock_path, variant.torch_constraints_path]


def _builtin_torch(torch_part: list[Pinned]) -> tuple[Path, Path, list[Pinned]] | None:
    """A built-in toolchain's torch lock files that pin the same torch pair, and what of ours
    they pin otherwise: the same files give the same torch layer, which the engine's cache then
    shares with that toolchain's image (the variant's own lock installs the others over it)."""
    from timmx.images.recipes import all_recipes

    ours = {p.name: p for p in torch_part}
    for recipe in all_recipes():
        lock, constraints = recipe.files["torch.lock"], recipe.files["torch.constraints"]
        theirs = {p.name: p.version for p in read_pins(lock)}
        if set(theirs) == set(ours) and all(theirs[n] == ours[n].version for n in TORCH_PAIR):
            return lock, constraints, [p for p in torch_part if theirs[p.name] != p.version]
    return None


def _resolve(requirements: list[str], layers: list[Path], preferred: list[Path]) -> list[Pinned]:
    """uv's resolution of `requirements` within the `layers`' pins, for the images' platform."""
    with tempfile.TemporaryDirectory(prefix="timmx-lock.") as tmp:
        folder = Path(tmp)
        (folder / "requirements.in").write_text("\n".join(requirements) + "\n")
        constraints = [f"{p.name}=={p.version}" for layer in layers for p in read_pins(layer)]
        (folder / "constraints.txt").write_text("\n".join(constraints) + "\n")
        out = folder / "requirements.txt"
        # uv keeps an existing output's pins where they still fit
        kept = {p.name: p.version for path in reversed(preferred) for p in read_pins(path)}
        out.write_text("".join(f"{name}=={version}\n" for name, version in sorted(kept.items())))
        command = [
            uv_binary(),
            "pip",
            "compile",
            "requirements.in",
            "--constraint",
            "constraints.txt",
            "--output-file",
            out.name,
            "--generate-hashes",
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            python_platform(),
            "--no-header",
            "--no-annotate",
            "--quiet",
        ]
        index = os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
        if index:
            command += ["--index-url", index]
        answer = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if answer.returncode != 0:
            raise InvalidInputError(
                f"uv cannot resolve {', '.join(requirements)}: {_why(answer.stderr)}"
            )
        return read_pins(out)


def _why(stderr: str) -> str:
    lines = [line.strip(" \u00d7\u2570\u2500\u25b6\u2502") for line in stderr.splitlines()]
    lines = [line.strip().removeprefix("error:").strip() for line in lines if line.strip()]
    lines = [line.removeprefix("cause:").strip() for line in lines]
    return " ".join(lines[:4])[:400] or "no reason given"


def _made_by(name: str) -> str:
    version = subprocess.run([uv_binary(), "--version"], capture_output=True, text=True)
    uv = version.stdout.strip() or "uv"
    return (
        f"`timmx images lock {name}` with {uv} for Python {PYTHON_VERSION} on {python_platform()}"
    )


def _comments(path: Path) -> list[str]:
    if not path.is_file():
        return []
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _write(path: Path, header: list[str], pinned: list[Pinned]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [p.line() for p in sorted(pinned, key=lambda p: p.name)]
    path.write_text("\n".join([*header, *body]) + "\n")
