"""Run a saved asset in coreai.runtime, for verification.

`AIModelAsset.executable()` is coreai's one way to run an asset everywhere: on macOS 27+ (the
Core AI framework) it loads the asset itself, here on the CPU; elsewhere it lowers the asset to
ODIX in a temporary folder and runs it in the runtime coreai-core ships, on the CPU. The model
stays loaded, on an event loop of its own, until the returned function is let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.backends._coreai.convert import ENTRYPOINT, INPUT, OUTPUT

if TYPE_CHECKING:
    from timmx.backends.base import Runtime


def open_runtime(artifact: Path) -> Runtime:
    import numpy as np
    from coreai.authoring import AIModelAsset
    from coreai.runtime import NDArray

    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()

    async def load() -> Any:
        asset = AIModelAsset.load(artifact)
        model = await stack.enter_async_context(asset.executable(_cpu_only()))
        return model.load_function(ENTRYPOINT)

    try:
        with _native_stderr_quiet():
            function = loop.run_until_complete(load())
    except BaseException:
        _close(loop, stack)
        raise

    def run(x: np.ndarray) -> np.ndarray:
        data = NDArray(np.ascontiguousarray(x, dtype=np.float32))
        with _native_stderr_quiet():
            outputs = loop.run_until_complete(function({INPUT: data}))
        return np.array(outputs[OUTPUT].numpy(), dtype=np.float32)  # a copy, not a view

    weakref.finalize(run, _close, loop, stack)
    return run


def describe_runtime() -> tuple[str, str]:
    """(what ran the asset, the report's note on what verification did and did not check)."""
    from coreai.runtime import _use_os_coreai

    if _use_os_coreai:
        return "Core AI framework of macOS (coreai.runtime), CPU only", (
            "verified with the Core AI framework of this Mac on its CPU (float32); the GPU and "
            "Neural Engine were not checked"
        )
    where = "macOS" if sys.platform == "darwin" else "this platform"
    return "coreai.runtime: the asset lowered to ODIX, run on the CPU", (
        f"verified in the Core AI runtime that coreai-core ships for {where}: the asset "
        "lowered to ODIX and run on the CPU (float32); an Apple device compiles it for its own "
        "GPU or Neural Engine, whose numerics were not checked"
    )


def _cpu_only() -> Any:
    """float32 on the CPU where the framework offers a choice (macOS 27+); None elsewhere,
    where the shipped runtime has only the CPU."""
    from coreai.runtime import SpecializationOptions

    return SpecializationOptions.cpu_only() if SpecializationOptions.is_supported() else None


def _close(loop: asyncio.AbstractEventLoop, stack: contextlib.AsyncExitStack) -> None:
    try:
        loop.run_until_complete(stack.aclose())
    finally:
        loop.close()


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """The runtime logs ("ODIE [default]: Loading function 'main'") from native code, straight
    to file descriptor 2, past Python's sys.stderr. Silence that descriptor meanwhile where the
    caller keeps converters quiet (timmx's runner redirects sys.stderr; not under --debug)."""
    if sys.stderr is sys.__stderr__:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
