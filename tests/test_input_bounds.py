"""Sizes are bounded before anything large is allocated: calibration tensors that claim far more
than their file holds, absurd batch and input sizes, and container log lines without an end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_errors import assert_refused, leftovers
from timmx.calibration import MAX_CALIBRATION_BYTES
from timmx.runners.docker import MAX_LOG_LINE, log_lines

# Runs the CLI in a child with an address-space limit (a regression fails with a MemoryError
# instead of taking the machine's memory) and prints the peak memory of that child, in KiB.
MEASURED = """
import resource, subprocess, sys
limit = 16 * 1024**3
def limited():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
done = subprocess.run([sys.executable, "-m", "timmx", *sys.argv[1:]], preexec_fn=limited,
                      capture_output=True, text=True)
sys.stderr.write(done.stderr)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def run_measured(cwd: Path, *args: str) -> tuple[int, int, str]:
    """(exit code, peak resident memory in bytes, stderr) of `timmx ARGS` in a child."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURED, *args], cwd=cwd, capture_output=True, text=True
    )
    code, peak_kib = (int(v) for v in done.stdout.split())
    return code, peak_kib * 1024, done.stderr


def test_a_strided_calibration_tensor_is_never_made_whole(workdir):
    # 200000 copies of one image: 120 GB as a tensor, a 600 KB file (its storage is one image).
    # An export of resnet18 alone peaks near 1.3 GB.
    image = torch.rand(3 * 224 * 224, generator=torch.Generator().manual_seed(0))
    strided = image.as_strided((200_000, 3, 224, 224), (0, 224 * 224, 224, 1))
    torch.save(strided, workdir / "strided.pt")
    assert (workdir / "strided.pt").stat().st_size < 1024**2
    assert torch.load(workdir / "strided.pt").shape == (200_000, 3, 224, 224)

    code, peak, err = run_measured(
        workdir,
        *("export", "onnx", "resnet18", "--input-size", "3", "32", "32", "--mode", "int8"),
        *("--calibration-data", "strided.pt", "--calibration-samples", "8", "-o", "q.onnx"),
    )
    assert code == 0, err
    assert peak < 3 * 1024**3, f"peak memory {peak / 1024**3:.1f} GiB"
    assert (workdir / "q.onnx").is_file()


def test_calibration_samples_past_the_memory_bound_are_refused_before_they_are_made(cli, workdir):
    side = 128
    sample = torch.rand(3 * side * side).as_strided((100_000, 3, side, side), (0, side**2, side, 1))
    torch.save(sample, workdir / "many.pt")
    need = 100_000 * 3 * side * side * 4
    assert need > MAX_CALIBRATION_BYTES  # 18.3 GiB
    result = cli(
        *("export", "onnx", "resnet18", "--input-size", "3", str(side), str(side)),
        *("--mode", "int8", "--calibration-data", "many.pt"),
        *("--calibration-samples", "100000", "-o", "q.onnx"),
    )
    assert_refused(
        result,
        "calibration data many.pt: 100000 samples of 3x128x128 take 18.3 GiB",
        "--calibration-samples",
    )
    assert leftovers(workdir) == ["many.pt"]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--batch-size", "100000"), "batch size 100000 is over timmx's limit of 1024"),
        (("--input-size", "3", "100000", "224"), "input size 3 100000 224 is over timmx's limits"),
        (("--input-size", "100000", "224", "224"), "(64 channels, 8192 pixels a side)"),
        (("--input-size", "3", "8192", "8192", "-b", "64"), "over timmx's limit of 1,073,741,824"),
    ],
    ids=["batch", "side", "channels", "total"],
)
def test_absurd_input_sizes_are_refused_in_one_line(cli, workdir, flags, needle):
    assert_refused(cli("export", "onnx", "resnet18", *flags, "-o", "m.onnx"), needle)
    assert leftovers(workdir) == []


class Chunks:
    """A container's log stream: `count` chunks of `chunk`, counting how many were read."""

    def __init__(self, chunk: bytes, count: int, tail: bytes = b"") -> None:
        self.chunk, self.count, self.tail, self.read = chunk, count, tail, 0

    def __iter__(self):
        for _ in range(self.count):
            self.read += 1
            yield self.chunk
        yield self.tail


def test_a_log_line_without_end_is_cut_and_memory_stays_bounded():
    import tracemalloc

    stream = Chunks(b"x" * 65536, 2048, b"\nnext line\n")  # 128 MiB without a newline
    tracemalloc.start()
    try:
        lines = list(log_lines(stream))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.read == 2048  # all of it went through
    assert peak < 1024**2, f"{peak} bytes held at once"
    first = "x" * MAX_LOG_LINE + f"... ({2048 * 65536 - MAX_LOG_LINE} more bytes cut)"
    assert lines == [first, "next line"]


def test_log_lines_keep_ordinary_lines_whole():
    stream = [b"one\r\ntw", b"o\n\n  \nthr", b"ee"]
    assert list(log_lines(stream)) == ["one", "two", "three"]
    long = "y" * (MAX_LOG_LINE - 1)
    assert list(log_lines([long.encode() + b"\n"])) == [long]
