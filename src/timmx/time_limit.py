"""A job's time limit, kept by the worker itself: a container whose host died (SIGKILL, a
closed terminal) still stops at the limit instead of running on with nobody watching."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

TIME_LIMIT_ENV = "TIMMX_TIME_LIMIT_S"


def time_limit_s() -> int | None:
    try:
        value = int(os.environ.get(TIME_LIMIT_ENV, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def start_watchdog(on_expiry: Callable[[int], None]) -> threading.Timer | None:
    """Call `on_expiry(limit)` once the environment's limit has passed (None: no limit). It
    should report the timeout and end the process."""
    limit = time_limit_s()
    if limit is None:
        return None
    timer = threading.Timer(limit, on_expiry, args=(limit,))
    timer.daemon = True
    timer.start()
    return timer


def timed_out_message(backend: str, limit: int) -> str:
    return (
        f"the {backend} export timed out after {limit} s and was stopped; nothing was written "
        "(raise --timeout)"
    )
