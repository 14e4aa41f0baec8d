"""Errors a user can act on. Each carries one line that says what to do."""

from __future__ import annotations

# Every error class by its `kind`, filled as each class that declares one is defined: an error
# that crossed a process boundary as (kind, message) is rebuilt as its own class.
ERROR_KINDS: dict[str, type[TimmxError]] = {}


class TimmxError(Exception):
    """A failure the user can fix; the CLI prints `error: <message>` and exits with code 2."""

    kind = "error"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            ERROR_KINDS[cls.kind] = cls

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(TimmxError):
    """A bad flag, a bad file, a bad combination of options."""

    kind = "invalid_input"


# Upstream timmx's name for it: scripts that catch `timmx.ConfigurationError` keep working.
ConfigurationError = InvalidInputError


class ExportError(TimmxError):
    """An export that failed after its options were accepted (upstream timmx's name): the
    converter failed, or the artifact did not match PyTorch."""

    kind = "export"


class ModelError(TimmxError):
    """The model cannot be created, or a checkpoint does not fit it."""

    kind = "model"


class CheckpointError(TimmxError):
    """The checkpoint file is missing, unreadable or unsafe."""

    kind = "checkpoint"


class ExportFailedError(ExportError):
    """The backend's converter failed on this model."""

    kind = "export_failed"


class VerificationError(ExportError):
    """The artifact's outputs differ from PyTorch's beyond the tolerance."""

    kind = "verification"


class BackendUnavailableError(TimmxError):
    """A backend's packages are not installed here."""

    kind = "backend_unavailable"


class DockerError(TimmxError):
    """The Docker engine or an image is not usable."""

    kind = "docker"


class ContractError(TimmxError):
    """A job or result does not follow the JSON contract."""

    kind = "contract"


ERROR_KINDS[TimmxError.kind] = TimmxError


def error_from_kind(kind: str, message: str) -> TimmxError:
    """Rebuild an error that crossed a process boundary as (kind, message)."""
    return ERROR_KINDS.get(kind, TimmxError)(message)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, for one-line errors: a line longer than
    `limit` ends at its last whole sentence within it, else at a whole word with "...", never
    mid-word (the whole text is in the traceback, under --debug)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return shorten(lines[0].strip(), limit) if lines else type(exc).__name__


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a sentence end, else at a word boundary."""
    if len(text) <= limit:
        return text
    head = text[: limit + 1]
    sentence = max(head.rfind(". "), head.rfind("; "), head.rfind(": "))
    if sentence >= limit // 2:
        return head[:sentence].rstrip(".;: ")
    space = head[:limit].rfind(" ")
    word = head[:space] if space > 0 else head[: limit - 3]
    return word.rstrip(",;:(- ") + "..."
