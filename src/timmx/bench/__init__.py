"""`timmx bench`: accuracy and latency of exported artifacts on the user's labelled images.

    import timmx
    report = timmx.bench(["dist/"], data="val/", limit=500)
    for row in report.rows:
        print(row.artifact, row.top1, row.top1_delta, row.latency_ms_p50)

Each artifact runs in its own runtime on the same preprocessed images as PyTorch eager (the
job's own model and checkpoint, rebuilt from the artifact's report): top-1/top-5, the paired
difference from eager with a 95% interval, latency, throughput, load time, memory, size.

`timmx.bench` is this package and is callable (`timmx.bench.api.bench`), as `timmx.backends`
is: importing a submodule such as `timmx.bench.model` makes the package the attribute.
"""

import sys
import types
from typing import Any


class _Package(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from timmx.bench.api import bench

        return bench(*args, **kwargs)


sys.modules[__name__].__class__ = _Package
