"""Run one ExportJob file and write an ExportResult file: the entrypoint of every image.

    python -m timmx.worker /job/job.json [--result /job/out/result.json]

Paths in the job are relative to the job file's folder. The result is written whatever happens,
so the host always learns why an export failed; the exit code is 0 on success, 2 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

from timmx.contract import ErrorInfo, ExportResult, parse_job
from timmx.environment import describe
from timmx.errors import TimmxError, first_line
from timmx.output import write_text_atomic


def _progress(message: str) -> None:
    print(f"{message}...", flush=True)


def run(job_path: Path, result_path: Path) -> int:
    if not os.environ.get("TIMMX_DEBUG"):
        warnings.simplefilter("ignore")  # converters' deprecation notes would drown the progress
    try:
        job = parse_job(job_path.read_text())
        from timmx.runners.local import run_local

        result = run_local(job, job_path.parent, progress=_progress, write_report=False)
        code = 0
    except TimmxError as exc:
        result = ExportResult(status="failed", error=ErrorInfo(kind=exc.kind, message=exc.message))
        code = 2
    except Exception as exc:  # a bug: keep the traceback in the container's log
        traceback.print_exc()
        result = ExportResult(
            status="failed",
            error=ErrorInfo(kind="internal", message=f"{type(exc).__name__}: {first_line(exc)}"),
        )
        code = 1
    if result.environment is None:
        result.environment = describe()
    write_text_atomic(result_path, result.model_dump_json(indent=2) + "\n")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timmx.worker", description=__doc__)
    parser.add_argument("job", type=Path)
    parser.add_argument("--result", type=Path, default=None)
    args = parser.parse_args(argv)
    result_path = args.result or args.job.parent / "out" / "result.json"
    return run(args.job, result_path)


if __name__ == "__main__":
    sys.exit(main())
