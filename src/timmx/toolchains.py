"""Toolchains a team pins: variants of the built-in toolchains, declared in the build file.

    [toolchains.ort-prod]
    from = "onnx"                       # the built-in toolchain it varies
    pins = { onnxruntime = "1.22.1" }   # exact versions: what production runs

A variant runs isolated, in an image of its own built from its lock: `timmx-locks/<name>.lock`
beside the build file, made by `timmx images lock <name>` (exact pins with sha256 hashes; commit
it). A variant that pins `torch` gets a torch layer of its own (`<name>.torch.lock`); the others
share the built-in toolchain's. A lock that is missing or older than its `pins` is refused before
anything runs. Each backend declares the versions of its main packages its code supports
(`Backend.supported`); a pin outside that range is refused.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from timmx.errors import InvalidInputError

LOCKS_DIR = "timmx-locks"
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*([a-z]+[0-9]*)?(\.post[0-9]+)?(\.dev[0-9]+)?")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Packages a variant may pin that replace the torch layer rather than join the toolchain's.
TORCH_PAIR = ("torch", "torchvision")


class ToolchainEntry(BaseModel):
    """`[toolchains.<name>]`: a variant of a built-in toolchain."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: str = Field(alias="from", description="The built-in toolchain it varies: onnx...")
    pins: dict[str, str] = Field(
        default_factory=dict,
        description='Exact versions of its packages, e.g. { onnxruntime = "1.22.1" }.',
    )


@dataclass(frozen=True)
class Variant:
    name: str
    base: str  # the built-in toolchain it varies
    pins: tuple[tuple[str, str], ...]  # (canonical name, exact version), sorted
    root: Path  # the build file's folder: its locks are in root/timmx-locks

    @property
    def lock_path(self) -> Path:
        return self.root / LOCKS_DIR / f"{self.name}.lock"

    @property
    def torch_lock_path(self) -> Path:
        return self.root / LOCKS_DIR / f"{self.name}.torch.lock"

    @property
    def torch_constraints_path(self) -> Path:
        return self.root / LOCKS_DIR / f"{self.name}.torch.constraints"

    @property
    def own_torch(self) -> bool:
        return any(name in TORCH_PAIR for name, _ in self.pins)

    @property
    def pins_line(self) -> str:
        return ", ".join(f"{n}=={v}" for n, v in self.pins) or "none"

    def lock_files(self) -> dict[str, Path]:
        """The build-context names its lock files replace in the base recipe."""
        files = {"requirements.lock": self.lock_path}
        if self.own_torch:
            files["torch.lock"] = self.torch_lock_path
            files["torch.constraints"] = self.torch_constraints_path
        return files


_VARIANTS: dict[str, Variant] = {}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def define_variants(entries: dict[str, ToolchainEntry], root: Path) -> dict[str, Variant]:
    """The build file's variants, checked and made known to the image commands by name (in
    place of any an earlier build file made known)."""
    from timmx.backends import all_backends

    builtin = {backend.toolchain for backend in all_backends()}
    variants = {}
    for name, entry in entries.items():
        place = f"toolchains.{name}"
        if not _NAME.fullmatch(name):
            raise InvalidInputError(
                f"{place}: a toolchain name is its image's name: lowercase letters, digits, "
                "'.', '_', '-': rename it"
            )
        if name in builtin:
            raise InvalidInputError(
                f"{place}: '{name}' is a built-in toolchain: give the variant a name of its own"
            )
        if entry.from_ not in builtin:
            raise InvalidInputError(
                f"{place}: from = '{entry.from_}' is not a built-in toolchain (choose one of "
                f"{', '.join(sorted(builtin))})"
            )
        pins = []
        for package, version in entry.pins.items():
            exact = version.strip().removeprefix("==")
            if not _VERSION.fullmatch(exact):
                raise InvalidInputError(
                    f"{place}: pins.{package} = {version!r} is not an exact version: pin one "
                    'release, e.g. "1.22.1"'
                )
            pins.append((canonical(package), exact))
        check_supported(entry.from_, dict(pins), place)
        variants[name] = Variant(name, entry.from_, tuple(sorted(pins)), root.resolve())
    _VARIANTS.clear()
    _VARIANTS.update(variants)
    return variants


def registered(name: str) -> Variant | None:
    return _VARIANTS.get(name)


def registered_variants() -> list[Variant]:
    return [_VARIANTS[name] for name in sorted(_VARIANTS)]


def forget_variants() -> None:
    _VARIANTS.clear()


def ship_variant(variant: Variant) -> dict[str, Any]:
    """What a Ray node needs to run a job in `variant`: its definition and its locks' text."""
    return {
        "name": variant.name,
        "from": variant.base,
        "pins": dict(variant.pins),
        "locks": {path.name: path.read_text() for path in variant.lock_files().values()},
    }


@contextmanager
def shipped_variant(shipped: dict[str, Any] | None) -> Iterator[None]:
    """On a Ray node: the host's variant (ship_variant) made known for one task, its locks in a
    folder of its own, removed afterwards; the node's own variants, if any, are back after."""
    if shipped is None:
        yield
        return
    saved = dict(_VARIANTS)
    root = Path(tempfile.mkdtemp(prefix="timmx-toolchain-"))
    try:
        (root / LOCKS_DIR).mkdir()
        for name, text in shipped["locks"].items():
            if Path(name).name != name:
                raise InvalidInputError(f"a shipped lock's name {name!r} is not a file name")
            (root / LOCKS_DIR / name).write_text(text)
        entry = ToolchainEntry.model_validate({"from": shipped["from"], "pins": shipped["pins"]})
        define_variants({shipped["name"]: entry}, root)
        yield
    finally:
        _VARIANTS.clear()
        _VARIANTS.update(saved)
        shutil.rmtree(root, ignore_errors=True)


def load_variants(path: Path | None = None, required: bool = False) -> dict[str, Variant]:
    """The variants of the build file `timmx build` would read here (or at `path`); none when
    there is no build file and none is `required`."""
    from timmx.build.spec import find_build_file, load_build_file

    try:
        found = find_build_file(path)
    except InvalidInputError:
        if required:
            raise
        forget_variants()
        return {}
    return define_variants(load_build_file(found).toolchains, found.parent)


# ---- the versions each backend supports ----


def supported_ranges(toolchain: str) -> dict[str, str]:
    """The supported versions of the toolchain's main packages, from its backends."""
    from timmx.backends import all_backends

    ranges: dict[str, str] = {}
    for backend in all_backends():
        if backend.toolchain == toolchain:
            for requirement in backend.supported:
                name, spec = re.match(r"([A-Za-z0-9._-]+)(.*)", requirement).groups()
                ranges[canonical(name)] = spec
    return ranges


def check_supported(toolchain: str, pins: dict[str, str], place: str) -> None:
    """Refuse, in one line naming the range, a pin its backend's code does not support."""
    ranges = supported_ranges(toolchain)
    for package, version in sorted(pins.items()):
        wanted = ranges.get(canonical(package))
        if wanted and not in_range(version, wanted):
            raise InvalidInputError(
                f"{place}: {package}=={version} is outside what the {toolchain} backend "
                f"supports ({package}{wanted}): pin a version in that range"
            )


def in_range(version: str, spec: str) -> bool:
    """`version` within `spec`: comma-separated `>=`, `>`, `<=`, `<`, `==` clauses compared by
    release numbers (1.22.1 against >=1.22,<2)."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = re.match(r"[<>=!]=?", clause)
        if op is None:
            raise ValueError(f"not a version range clause: {clause!r}")
        bound = _release(clause[op.end() :])
        width = max(len(have), len(bound))
        a, b = have + (0,) * (width - len(have)), bound + (0,) * (width - len(bound))
        ok = {
            ">=": a >= b,
            ">": a > b,
            "<=": a <= b,
            "<": a < b,
            "==": a == b,
            "!=": a != b,
        }.get(op.group())
        if not ok:
            return False
    return True


def _release(version: str) -> tuple[int, ...]:
    numbers = []
    for piece in version.strip().split("+")[0].split("."):
        digits = re.match(r"[0-9]+", piece)
        if digits is None:
            break
        numbers.append(int(digits.group()))
    return tuple(numbers)


# ---- locks ----

HEADER_FROM = "# from: "
HEADER_PINS = "# pins: "


def lock_header(path: Path) -> dict[str, str]:
    """The `# from:` and `# pins:` lines a lock was made for."""
    found = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        for key, prefix in (("from", HEADER_FROM), ("pins", HEADER_PINS)):
            if line.startswith(prefix):
                found[key] = line[len(prefix) :].strip()
    return found


def check_lock(variant: Variant) -> None:
    """Refuse, before anything runs, a variant whose lock is missing or older than its pins."""
    fix = f"run `timmx images lock {variant.name}` in {variant.root} (and commit {LOCKS_DIR}/)"
    missing = [p for p in variant.lock_files().values() if not p.is_file()]
    if missing:
        raise InvalidInputError(
            f"the toolchain '{variant.name}' has no lock ({missing[0].relative_to(variant.root)}"
            f" is missing): {fix}"
        )
    header = lock_header(variant.lock_path)
    if header.get("from") != variant.base or header.get("pins") != variant.pins_line:
        was = f"from {header.get('from', '?')} with {header.get('pins', '?')}"
        raise InvalidInputError(
            f"the lock of the toolchain '{variant.name}' is older than its pins (locked {was}; "
            f"the build file says from {variant.base} with {variant.pins_line}): {fix}"
        )


def lock_sha256(files: dict[str, Path]) -> str:
    """One sha256 over a toolchain's lock files: what the manifest records per job."""
    digest = hashlib.sha256()
    for name, path in sorted(files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def toolchain_for_export(backend, name: str) -> str | None:
    """`timmx export <backend> --toolchain NAME`: the variant of the build file `timmx build`
    would read here, checked (its base is the backend's toolchain, its lock is up to date);
    None for the backend's own toolchain."""
    if name == backend.toolchain:
        return None
    variants = load_variants(required=True)
    variant = variants.get(name)
    if variant is None:
        raise InvalidInputError(
            f"--toolchain {name}: the build file here declares no [toolchains.{name}] (variants: "
            f"{', '.join(variants) or 'none'})"
        )
    if variant.base != backend.toolchain:
        raise InvalidInputError(
            f"--toolchain {name} varies the {variant.base} toolchain, not {backend.name}'s "
            f"({backend.toolchain}): export with `timmx export {variant.base}` or pick a variant "
            f"from {backend.toolchain}"
        )
    check_lock(variant)
    return name
