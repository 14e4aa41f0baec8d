"""Run one ExportJob file and write an ExportResult file: the entrypoint of every image.

    python -m timmx.worker /job/job.json [--result /job/out/result.json]

Paths in the job are relative to the job file's folder and must stay inside it. The result is
written whatever happens (its own folder is created if missing), so the host always learns why an
export failed; a failure is also printed as one `error:` line on stderr. The exit code is 0 on
success, 2 for a job that cannot be done as written, 1 for a bug (traceback in the log).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from timmx.contract import ErrorInfo, ExportJob, ExportResult, check_paths_inside, parse_job
from timmx.environment import describe
from timmx.errors import ContractError, InvalidInputError, TimmxError, first_line
from timmx.publish import write_text_atomic
from timmx.runners.base import Runner
from timmx.time_limit import start_watchdog, timed_out_message


def _progress(message: str) -> None:
    print(f"{message}...", flush=True)


def run(job_path: Path, result_path: Path) -> int:
    def expire(limit: int) -> None:  # no host may be watching: stop, and say why
        message = timed_out_message(_backend_named(job_path), limit)
        _error_line(message, sys.__stderr__ or sys.stderr)  # past any redirect of converters
        os._exit(_write_result(_failed("export_failed", message), result_path, 2))

    watchdog = start_watchdog(expire)
    result, code = _export(job_path)
    if watchdog is not None:
        watchdog.cancel()
    if result.environment is None:
        result.environment = describe()
    if result.error is not None:
        _error_line(_describe_error(result.error))
    return _write_result(result, result_path, code)


def _export(job_path: Path) -> tuple[ExportResult, int]:
    try:
        job = _read_job(job_path)
        # The job may come from anyone: refuse paths outside its folder before touching a file.
        check_paths_inside(job)
        with _local_runner(write_report=False) as runner:
            return runner.run(job, job_path.parent, progress=_progress), 0
    except TimmxError as exc:
        return _failed(exc.kind, exc.message), 2
    except Exception as exc:  # a bug: keep the traceback in the container's log
        traceback.print_exc()
        return _failed("internal", f"{type(exc).__name__}: {first_line(exc)}"), 1


def _read_job(job_path: Path) -> ExportJob:
    try:
        text = job_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInputError(f"job file not found: {job_path}") from None
    except UnicodeDecodeError:
        raise ContractError(f"job is not valid JSON: {job_path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read the job file {job_path}: {exc.strerror}") from None
    return parse_job(text)


def _backend_named(job_path: Path) -> str:
    import json

    try:
        return str(json.loads(job_path.read_text())["backend"])
    except (OSError, ValueError, KeyError, TypeError):
        return "?"


def _failed(kind: str, message: str) -> ExportResult:
    return ExportResult(status="failed", error=_error(kind, message))


def _describe_error(error: ErrorInfo) -> str:
    if error.kind == "internal":
        return f"internal error: {error.message} (a bug: report it with the traceback above)"
    return error.message


def _write_result(result: ExportResult, result_path: Path, code: int) -> int:
    try:
        # Its folder only: a mistyped job path should not leave a trail of new folders.
        result_path.parent.mkdir(exist_ok=True)
        write_text_atomic(result_path, result.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        _error_line(
            f"cannot write the result {result_path}: {exc.strerror}: "
            "pass --result with a path in a writable folder"
        )
        return code or 2
    return code


def _error_line(message: str, stream=None) -> None:
    print(f"error: {message}", file=stream or sys.stderr, flush=True)


def serve(workspace: Path, write_report: bool = True, host_paths: bool = False) -> int:
    """A warm worker for `timmx build`: jobs on stdin, one at a time, each answered on the
    original stdout (`progress`, then `result` or `error`: `timmx.runners.protocol`). Anything
    else printed (converters, native libraries) goes to stderr, off the protocol. It ends when
    stdin does. `write_report=False`: the host writes the reports (a worker in a container).
    `host_paths`: the jobs come from this host's own timmx (a build's warm worker), so their
    paths may leave the workspace as the CLI's do (`[build] output = "../dist"`)."""
    from timmx.runners import protocol

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    runner = _local_runner(write_report=write_report)

    def send(message: protocol.Message) -> None:
        protocol.write_message(answers, message)

    current = {"backend": "?"}

    def expire(limit: int) -> None:  # the job ran past its limit: say so, and end
        message = timed_out_message(**current, limit=limit)
        send(protocol.ErrorMessage(error=_error("export_failed", message), ending=True))
        os._exit(2)

    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            current["backend"] = "?"
            watchdog = start_watchdog(expire)
            try:
                request = protocol.decode(line)
                if not isinstance(request, protocol.JobMessage):
                    raise ContractError("a worker takes job messages only")
                job = request.job
                current["backend"] = job.backend
                if not host_paths:
                    check_paths_inside(job)
                result = runner.run(
                    job, workspace, lambda m: send(protocol.ProgressMessage(progress=m))
                )
                send(protocol.ResultMessage(result=result))
            except TimmxError as exc:
                send(protocol.ErrorMessage(error=_error(exc.kind, exc.message)))
            except Exception as exc:  # a bug: the traceback goes to the log, the build goes on
                traceback.print_exc()
                message = f"{type(exc).__name__}: {first_line(exc)}"
                send(protocol.ErrorMessage(error=_error("internal", message)))
            finally:
                if watchdog is not None:
                    watchdog.cancel()
    except KeyboardInterrupt:  # the host stops the build: the job's staging is already gone
        return 130
    return 0


def _local_runner(write_report: bool) -> Runner:
    from timmx.runners.spec import LocalSpec, open_runner

    verbose = bool(os.environ.get("TIMMX_DEBUG"))
    return open_runner(LocalSpec(write_report=write_report, verbose=verbose))


def _error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(kind=kind, message=message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timmx.worker", description=__doc__)
    parser.add_argument("job", type=Path, nargs="?")
    parser.add_argument("--result", type=Path, default=None)
    parser.add_argument("--serve", type=Path, metavar="WORKSPACE", default=None)
    parser.add_argument(
        "--no-report", action="store_true", help="with --serve: the host writes the reports"
    )
    parser.add_argument(
        "--host-paths",
        action="store_true",
        help="with --serve: jobs from this host's timmx, whose paths may leave the workspace",
    )
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve(args.serve, write_report=not args.no_report, host_paths=args.host_paths)
    if args.job is None:
        parser.error("a job file is needed (or --serve WORKSPACE)")
    result_path = args.result or args.job.parent / "out" / "result.json"
    return run(args.job, result_path)


if __name__ == "__main__":
    from timmx._exit import fast_exit

    fast_exit(main())
