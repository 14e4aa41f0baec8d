"""`--isolated auto`: a backend runs in this process when its packages import here, else in its
pinned image when a Docker engine answers, and says so in one line.

The setting comes from the export's `isolated` option (`--isolated auto` on the command line,
`isolated="auto"` in the API, `isolated = "auto"` in a build file), else from the environment:
TIMMX_ISOLATED=auto (or 1/0). It lets a command written for a venv that holds every converter,
such as upstream timmx's README commands, run unchanged on one that cannot hold some of them
(executorch pins its own torch).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from timmx.errors import DockerError, InvalidInputError

if TYPE_CHECKING:
    from timmx.backends.base import Backend

AUTO = "auto"
ENVIRONMENT = "TIMMX_ISOLATED"
_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def setting(value: Any, where: str = "--isolated") -> bool | str:
    """True, False or "auto" from a flag, a build file's value or the environment's text."""
    if isinstance(value, bool) or value == AUTO:
        return value
    if isinstance(value, str) and value.lower() in _WORDS:
        return _WORDS[value.lower()]
    raise InvalidInputError(f"{where} takes true, false or auto, not {value!r}")


def given_or_environment(given: dict[str, Any]) -> bool | str:
    """The `isolated` option if it was given, else TIMMX_ISOLATED, else False."""
    if given.get("isolated") is not None:
        return setting(given["isolated"])
    if text := os.environ.get(ENVIRONMENT):
        return setting(text, ENVIRONMENT)
    return False


def resolve(backend: Backend, value: bool | str, say: Callable[[str], None] | None = None) -> bool:
    """Whether to run isolated: `value` itself unless it is "auto"; then isolated exactly when
    the backend's packages are missing here and an engine answers (once per backend a process,
    with one line through `say`, stderr by default). Without an engine it stays in-process,
    where the missing packages are refused with the usual line."""
    if value != AUTO:
        return bool(value)
    isolated, line = _decide(backend.name)
    if line and backend.name not in _said:
        _said.add(backend.name)
        (say or _to_stderr)(line)
    return isolated


_said: set[str] = set()


@cache
def _decide(name: str) -> tuple[bool, str | None]:
    from timmx.backends import get_backend

    missing = get_backend(name).missing_packages()
    if not missing:
        return False, None
    try:
        from timmx.images.engine import connect

        connect().close()
    except DockerError:
        return False, None
    return True, (
        f"note: {', '.join(missing)} cannot be imported here: the {name} export runs in its "
        "Docker image (--isolated auto)"
    )


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
