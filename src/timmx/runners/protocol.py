"""The JSON-lines exchange between a host and a warm worker (`timmx.worker --serve`), in a
process of this host or in a container: one message a line, named by its one key.

    {"job": {...}}                      host -> worker: export this ExportJob
    {"progress": "Exporting to onnx"}   worker -> host: a step, any number of them
    {"result": {...}}                   worker -> host: the job's ExportResult
    {"error": {"kind": ..., "message": ...}, "ending": true}
                                        worker -> host: the job failed (`ending`: the worker
                                        ends after it, so the next job needs a fresh one)

A line that is not one of these is a `ContractError` in one line: a worker in a container is
not trusted to speak the protocol.
"""

from __future__ import annotations

import json
from typing import IO

from pydantic import BaseModel, ConfigDict, ValidationError

from timmx.contract import ErrorInfo, ExportJob, ExportResult
from timmx.errors import ContractError


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobMessage(_Message):
    job: ExportJob


class ProgressMessage(_Message):
    progress: str


class ResultMessage(_Message):
    result: ExportResult
    ending: bool = False


class ErrorMessage(_Message):
    error: ErrorInfo
    ending: bool = False


Message = JobMessage | ProgressMessage | ResultMessage | ErrorMessage
Answer = ResultMessage | ErrorMessage  # what ends a job's exchange
_BY_KEY: dict[str, type[_Message]] = {
    "job": JobMessage,
    "progress": ProgressMessage,
    "result": ResultMessage,
    "error": ErrorMessage,
}
_SHOWN = 60  # characters of a bad line quoted in the error


def encode(message: Message) -> str:
    """The message as one line, newline included (`ending` only when it is true)."""
    data = message.model_dump(mode="json")
    if data.get("ending") is False:
        del data["ending"]
    return json.dumps(data) + "\n"


def decode(line: str | bytes) -> Message:
    """The message a line holds, or a one-line ContractError saying why it holds none."""
    try:
        data = json.loads(line)
    except ValueError:
        raise ContractError(f"not a protocol message (not JSON): {_quote(line)}") from None
    kinds = [key for key in _BY_KEY if isinstance(data, dict) and key in data]
    if len(kinds) != 1:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ContractError(
            f"not a protocol message: expected one of {', '.join(_BY_KEY)}, got {keys}"
        )
    try:
        return _BY_KEY[kinds[0]].model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ContractError(f"malformed {kinds[0]} message: {where}: {first['msg']}") from None


def write_message(stream: IO[str], message: Message) -> None:
    stream.write(encode(message))
    stream.flush()


def read_message(stream: IO[str]) -> Message | None:
    """The next message on `stream`; None at its end. Blank lines are skipped."""
    for line in stream:
        if line.strip():
            return decode(line)
    return None


def _quote(line: str | bytes) -> str:
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = " ".join(text.split())
    return repr(text[:_SHOWN] + ("..." if len(text) > _SHOWN else ""))
