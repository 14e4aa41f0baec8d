"""The warm export containers of one build slot: one per toolchain (or pinned image) and
limits, started at its first isolated job and serving the rest (`timmx.runners.warm_container`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from timmx.build.cache import input_paths
from timmx.build.plan import PlannedJob
from timmx.cleanup import EXCHANGE_PREFIX, write_owner
from timmx.contract import ExportResult
from timmx.images.registry import Pin
from timmx.runners.base import Progress
from timmx.runners.warm_container import WarmContainer


class ContainerPool:
    def __init__(
        self,
        workspace: Path,
        scratch: Path,
        jobs: list[PlannedJob],
        pins: dict[str, Pin] | None = None,
    ) -> None:
        isolated = [planned for planned in jobs if planned.isolated]
        # Every input of the build's isolated jobs is mounted in each container (read-only), so
        # one container serves them all; the build checked they are the build's own files.
        self.inputs = sorted({path for planned in isolated for path in input_paths(planned)})
        self.pretrained = any(planned.job.model.pretrained for planned in isolated)
        self.workspace = workspace
        self.scratch = scratch
        self.pins = pins or {}  # job id -> the image it must run in (`--locked`)
        self._client = None
        self._containers: dict[tuple[str, str, int], WarmContainer] = {}
        self._exchanges: list[Path] = []
        self._fetched: set[tuple[str, str]] = set()  # (image, model) whose weights are cached

    def run(self, planned: PlannedJob, progress: Progress) -> ExportResult:
        from timmx.backends import get_backend

        pin = self.pins.get(planned.id)
        toolchain = pin.image_id if pin else get_backend(planned.job.backend).toolchain
        key = (toolchain, planned.memory, planned.timeout_s)
        container = self._containers.get(key)
        if container is None or not container.alive:
            if container is not None:
                container.close()
            container = self._start(planned, toolchain, pin, progress)
            self._containers[key] = container
        name = planned.job.model.name
        if planned.job.model.pretrained and (container.image.id, name) not in self._fetched:
            from timmx.runners.docker import fetch_weights

            fetch_weights(self._client, container.image.ref, name, container, progress)
            self._fetched.add((container.image.id, name))
        return container.run(planned.job, progress)

    def _start(
        self, planned: PlannedJob, toolchain: str, pin: Pin | None, progress: Progress
    ) -> WarmContainer:
        from timmx.images.engine import connect
        from timmx.images.find import ensure_image
        from timmx.images.identity import BuildSettings
        from timmx.images.registry import pin_image
        from timmx.runners.docker import check_limits, steps_only

        check_limits(planned.memory, planned.timeout_s)
        if self._client is None:
            self._client = connect("or set isolated = false to export in this process")
        if pin is not None:
            image = pin_image(self._client, pin, BuildSettings.resolve().registry, progress)
        else:
            image = ensure_image(
                self._client,
                toolchain,
                BuildSettings.resolve(),
                build=planned.build,
                notice=progress,
                on_line=steps_only(progress),
            )
        exchange = self._exchange_folder()
        return WarmContainer(
            self._client,
            image,
            self.workspace,
            self.inputs,
            exchange,
            memory=planned.memory,
            timeout_s=planned.timeout_s,
            pids_limit=int(os.environ.get("TIMMX_PIDS_LIMIT", "1024")),
            pretrained=self.pretrained,
        )

    def _exchange_folder(self) -> Path:
        """A folder in the build's output for a container's jobs. Its owner record lies beside
        the part the container sees, out of the container's reach (`timmx clean` trusts it)."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=EXCHANGE_PREFIX, dir=self.scratch))
        self._exchanges.append(folder)
        write_owner(folder)
        exchange = folder / "work"
        exchange.mkdir(mode=0o700)
        return exchange

    def close(self) -> None:
        for container in self._containers.values():
            container.close()
        self._containers.clear()
        for exchange in self._exchanges:
            shutil.rmtree(exchange, ignore_errors=True)
        if self._client is not None:
            self._client.close()
            self._client = None
