"""End the process without the interpreter's teardown once torch is loaded.

With torch, timm and a converter loaded, CPython's own teardown (module by module, object by
object) took 1.8-4.5 s after an ONNX export on a 2-core machine: longer than export and
verification together. The console script and the worker end through `fast_exit` instead: exit
handlers run and the streams are flushed, then the process ends. Everything timmx writes is
already published (renamed into place) before this point.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys


def fast_exit(code: object) -> None:
    """Exit with `code` (as `sys.exit` takes it); skip the teardown where torch is loaded."""
    if "torch" not in sys.modules:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message") prints the message and exits with 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # weakref finalizers, temporary folders, tqdm's monitor...
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(status)
