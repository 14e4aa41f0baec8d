"""Run an artifact in its toolchain's own image, apart from timmx: the independent check for
backends whose runtime cannot live in the test's venv (ExecuTorch links its own torch).

`run_in_image(toolchain, script, folder)` runs a Python script in the image (testcontainers), with
`folder` mounted read-only at /check, no network, as this uid; the script prints JSON on stdout,
which comes back parsed. The host compares it with its own PyTorch reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tests.isolated.helpers import build_image


def image_of(toolchain: str) -> str:
    """The image timmx runs `toolchain` in (built when missing)."""
    from timmx.images.engine import connect
    from timmx.images.find import ensure_image
    from timmx.images.identity import BuildSettings

    build_image(toolchain)
    client = connect()
    try:
        return ensure_image(client, toolchain, BuildSettings.resolve(), build=False).ref
    finally:
        client.close()


def run_in_image(toolchain: str, script: str, folder: Path, timeout_s: int = 600) -> Any:
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(image_of(toolchain))
        .with_volume_mapping(str(folder), "/check", "ro")
        .with_env("HOME", "/tmp")
        .with_kwargs(
            entrypoint=["/opt/venv/bin/python", "-c", script],
            network_mode="none",
            user=f"{os.getuid()}:{os.getgid()}",
            working_dir="/check",
        )
    )
    with container:
        status = container.get_wrapped_container().wait(timeout=timeout_s)
        out, err = container.get_logs()
    assert status["StatusCode"] == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


RUN_PTE = """
import json, sys
import numpy as np, torch
from executorch.runtime import Runtime

program = Runtime.get().load_program("/check/{name}")
method = program.load_method("forward")
outputs = {{}}
for key in {inputs!r}:
    x = torch.from_numpy(np.load(f"/check/{{key}}.npy"))
    outputs[key] = method.execute([x])[0].numpy().tolist()
print(json.dumps(outputs))
"""


def run_pte(artifact: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a .pte in ExecuTorch's runtime, in the executorch image, on each named input."""
    for key, x in inputs.items():
        np.save(artifact.parent / f"{key}.npy", np.ascontiguousarray(x, dtype=np.float32))
    script = RUN_PTE.format(name=artifact.name, inputs=list(inputs))
    outputs = run_in_image("executorch", script, artifact.parent)
    return {key: np.asarray(value, dtype=np.float32) for key, value in outputs.items()}
