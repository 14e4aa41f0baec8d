"""Shared terminal output: progress and messages on stderr, results on stdout."""

from __future__ import annotations

import os

from rich.console import Console
from rich.markup import escape

__all__ = ["err", "escape", "fail", "out"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

_state = {"debug": bool(os.environ.get("TIMMX_DEBUG"))}


def set_debug(value: bool) -> None:
    """Set once per invocation (by the app's callback), so one run's --debug never leaks."""
    _state["debug"] = value or bool(os.environ.get("TIMMX_DEBUG"))


def debug_enabled() -> bool:
    return _state["debug"]


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
