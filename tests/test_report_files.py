"""Each report lists its artifact's files as they are: sizes and sha256 recomputed here, for
single files and folder artifacts alike."""

from __future__ import annotations

import pytest

from tests.report_files import assert_report_lists_the_files

CASES = {
    "onnx": "m.onnx",
    "torch-export": "m.pt2",
    "torchscript": "m.pt",
    "litert": "m.tflite",
    "ncnn": "m.ncnn",
    "coreml": "m.mlpackage",
    "coreai": "m.aimodel",
}


@pytest.mark.parametrize("backend", CASES)
def test_the_report_lists_the_files_as_they_are(cli, workdir, backend):
    artifact = workdir / "out" / CASES[backend]
    result = cli(
        "export", backend, "mobilenetv3_small_100", "--input-size", 3, 32, 32, "-o", artifact
    )
    assert result.code == 0, result.err
    report = assert_report_lists_the_files(artifact)
    if artifact.is_dir():
        assert len(report["artifacts"]) >= 2  # every member, not the folder
