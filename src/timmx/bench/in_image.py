"""Measure an artifact inside its toolchain's image, for a runtime this venv cannot hold
(ExecuTorch links its own torch) or when `--isolated` asks for it.

The host keeps eager, the images and the statistics; the container only runs the artifact
(`python -m timmx.bench.measure`), hardened as an export container is (no network, this uid,
read-only root, limits). The artifact is mounted read-only; an exchange folder of timmx's own
(owner-recorded, removed on exit) carries the request and images in and the numbers out.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from contextlib import suppress
from pathlib import Path

import numpy as np

from timmx.bench.measure import IMAGES, MEASURED, REQUEST, SCORES, Measured, Request
from timmx.cleanup import EXCHANGE_PREFIX, write_owner
from timmx.errors import DockerError, InvalidInputError, first_line

BENCH_DIR = "/bench"
MEMORY = "8g"
TIMEOUT_S = 1800
PIDS_LIMIT = 1024


def measure_in_image(
    toolchain: str, request: Request, x: np.ndarray, scratch: Path
) -> tuple[Measured, np.ndarray]:
    """`measure` run in `toolchain`'s image (built when missing), `scratch` holding the
    exchange folder for the run."""
    from timmx.images.engine import connect
    from timmx.images.find import ensure_image
    from timmx.images.identity import BuildSettings

    artifact = Path(request.artifact)
    client = connect("or bench where its runtime is installed, without --isolated")
    folder = Path(tempfile.mkdtemp(prefix=EXCHANGE_PREFIX, dir=scratch))
    try:
        write_owner(folder)  # beside the part the container sees, out of its reach
        exchange = folder / "io"
        exchange.mkdir(mode=0o700)
        image = ensure_image(client, toolchain, BuildSettings.resolve())
        inside = f"{BENCH_DIR}/artifact/{artifact.name}"
        (exchange / REQUEST).write_text(
            request.model_copy(update={"artifact": inside}).model_dump_json()
        )
        np.save(exchange / IMAGES, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
        _run(client, image.ref, artifact, inside, exchange)
        return _answer(exchange)
    finally:
        client.close()
        shutil.rmtree(folder, ignore_errors=True)


def _run(client, image: str, artifact: Path, inside: str, exchange: Path) -> None:
    from docker.errors import APIError

    from timmx.runners.docker import bind_mounts, hardened_options

    options = hardened_options(
        image,
        [f"{BENCH_DIR}/io"],
        bind_mounts([(artifact.resolve(), inside, True), (exchange, f"{BENCH_DIR}/io", False)]),
        {},
        MEMORY,
        PIDS_LIMIT,
    )
    options["entrypoint"] = ["/opt/venv/bin/python", "-m", "timmx.bench.measure"]
    options["auto_remove"] = False  # its exit code and last lines are read after it ends
    try:
        container = client.containers.create(**options)
    except APIError as exc:
        raise DockerError(f"cannot create the bench container: {first_line(exc)}") from None
    try:
        client.api.timeout = None  # a long measurement must not look like a dead engine
        container.start()
        try:
            status = container.wait(timeout=TIMEOUT_S)
        except Exception:  # the engine's read timed out: the measurement ran past the limit
            raise DockerError(
                f"benching {artifact.name} in its image ran past {TIMEOUT_S} s: bench fewer "
                "images with --limit"
            ) from None
        if status.get("StatusCode") != 0:
            lines = container.logs(stdout=False, stderr=True).decode(errors="replace")
            tail: deque[str] = deque((ln for ln in lines.splitlines() if ln.strip()), maxlen=1)
            last = tail[0] if tail else f"exit code {status.get('StatusCode')}"
            raise InvalidInputError(
                f"benching {artifact.name} in its image failed ({last}): rerun with --debug, "
                "or check the artifact with `timmx export ... --isolated`"
            )
    finally:
        with suppress(APIError):
            container.remove(force=True)


def _answer(exchange: Path) -> tuple[Measured, np.ndarray]:
    try:
        measured = Measured.model_validate_json((exchange / MEASURED).read_text())
        scores = np.load(exchange / SCORES, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DockerError(f"the bench container gave no readable answer ({exc})") from None
    if scores.dtype != np.float32 or scores.ndim != 2:
        raise DockerError(f"the bench container's scores are {scores.dtype} {scores.shape}")
    return measured, scores
