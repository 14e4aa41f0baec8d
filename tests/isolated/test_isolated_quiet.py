"""What an isolated export shows (issue 24): timmx's own lines, the converter's logs kept in a
log file; and `--isolated auto`, which runs a backend this venv cannot hold in its image."""

from __future__ import annotations

import importlib.util

import pytest

from tests.isolated.helpers import build_image
from timmx import isolation

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "32")
# What LiteRT's converter and TensorFlow write from C++ in the image, straight to stderr.
CONVERTER_LINES = ("absl::InitializeLog", "oneDNN", "flatbuffer_export", "XNNPACK delegate")


def test_an_isolated_export_keeps_the_converters_logs_in_a_log_file(
    cli, workdir, make_checkpoint, monkeypatch, no_leftovers
):
    build_image("litert")
    monkeypatch.setenv("TIMMX_CACHE_DIR", str(workdir / "cache"))
    ckpt = make_checkpoint("resnet18", num_classes=10)
    flags = ("-c", ckpt, "--num-classes", 10, *SIZE, "--isolated")
    result = cli("export", "litert", "resnet18", *flags, "-o", "m.tflite")
    assert result.code == 0, result.err
    said = result.out + result.err
    assert not [line for line in CONVERTER_LINES if line in said], said
    logs = list((workdir / "cache" / "logs").glob("m.tflite.*.log"))
    assert len(logs) == 1
    assert str(logs[0]) in said.replace("\n", "")  # named in one line
    kept = logs[0].read_text()
    assert any(line in kept for line in CONVERTER_LINES), kept

    # --debug lets them through, and keeps no file.
    debug = cli("--debug", "export", "litert", "resnet18", *flags, "-o", "d.tflite")
    assert debug.code == 0, debug.err
    assert any(line in debug.out + debug.err for line in CONVERTER_LINES)
    assert not list((workdir / "cache" / "logs").glob("d.tflite.*.log"))


def test_isolated_auto_runs_executorch_from_this_venv(
    cli, workdir, make_checkpoint, monkeypatch, no_leftovers
):
    if importlib.util.find_spec("executorch") is not None:
        pytest.fail("this test needs a venv without executorch (the `make setup` venv)")
    monkeypatch.setattr(isolation, "_said", set())  # the line is said once a process
    build_image("executorch")
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "executorch", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "-o", "m.pte", "--isolated", "auto",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "runs in its Docker image (--isolated auto)" in result.err
    report = result.report(workdir / "m.pte")
    assert report["environment"]["runner"] == "docker"
    assert report["verification"]["status"] == "passed"

    # Where the packages import, `auto` stays in this process: the ONNX export runs here.
    here = cli("export", "onnx", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
               "-o", "m.onnx", "--isolated", "auto")  # fmt: skip
    assert here.code == 0, here.err
    assert result.report(workdir / "m.onnx")["environment"]["runner"] != "docker"
