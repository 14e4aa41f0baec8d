"""timmx's own source, as installed into every image: its files, their hash, a wheel of them.

The source is the package that is running (a checkout's src/timmx, or an installed copy), so
the worker in an image always speaks the host's contract. The wheel is written here, without a
build backend, and byte-for-byte reproducible: same source, same wheel, a cached image layer.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

import timmx
from timmx import __version__

PACKAGED_RECIPES = "_recipes"  # recipes shipped inside an installed timmx (see recipes.py)
_EPOCH = (1980, 1, 1, 0, 0, 0)


def package_dir() -> Path:
    return Path(timmx.__file__).resolve().parent


def source_files(root: Path | None = None) -> list[Path]:
    """The package's files, sorted: no caches, no dotfiles, no shipped recipes."""
    root = root or package_dir()
    files = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if (
            not path.is_file()
            or "__pycache__" in parts
            or parts[0] == PACKAGED_RECIPES
            or any(p.startswith(".") for p in parts)
            or path.suffix in (".pyc", ".pyo")
        ):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_hash(root: Path | None = None) -> str:
    root = root or package_dir()
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def write_wheel(folder: Path, root: Path | None = None) -> Path:
    """A pure-Python wheel of the running timmx in `folder`; returns its path."""
    root = root or package_dir()
    version = __version__
    dist_info = f"timmx-{version}.dist-info"
    entries: list[tuple[str, bytes]] = [
        (f"timmx/{p.relative_to(root).as_posix()}", p.read_bytes()) for p in source_files(root)
    ]
    entries.append((f"{dist_info}/METADATA", _metadata(version).encode()))
    entries.append(
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: timmx\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
    )
    entries.append(
        (f"{dist_info}/entry_points.txt", b"[console_scripts]\ntimmx = timmx.cli.app:main\n")
    )
    record = [f"{name},sha256={_b64(data)},{len(data)}" for name, data in entries]
    record.append(f"{dist_info}/RECORD,,")
    entries.append((f"{dist_info}/RECORD", ("\n".join(record) + "\n").encode()))

    path = folder / f"timmx-{version}-py3-none-any.whl"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    path.write_bytes(buffer.getvalue())
    return path


def _metadata(version: str) -> str:
    lines = ["Metadata-Version: 2.1", "Name: timmx", f"Version: {version}"]
    try:
        requires = metadata("timmx").get_all("Requires-Dist") or []
    except PackageNotFoundError:
        requires = []
    lines += [f"Requires-Dist: {r}" for r in requires if "extra ==" not in r]
    return "\n".join(lines) + "\n"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
