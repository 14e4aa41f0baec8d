"""Build a toolchain image.

A build assembles a small context (the recipe, the shared files it names, an optional torch wheel
folder, timmx's own wheel) and streams the engine's output line by line; a failure names its step
and last lines.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

from timmx import __version__
from timmx.errors import DockerError, first_line
from timmx.images.identity import BuildSettings, ImageIdentity, identify
from timmx.images.recipes import Recipe
from timmx.images.source import write_wheel

Line = Callable[[str], None]


def ignore_line(_: str) -> None:
    pass


def build_image(
    client,
    recipe: Recipe,
    settings: BuildSettings,
    identity: ImageIdentity | None = None,
    on_line: Line = ignore_line,
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
