"""`[bench]` in a build file: the trained digits model built to fp32 ONNX and to an int8 ONNX
calibrated on one blank image (which passes verification: it runs on that image), benched
after the build, recorded in the manifest, cached; `timmx build --check` fails the artifact
whose top-1 drop against eager is over `max-accuracy-drop`, naming it, and only it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.bench_digits import (
    Digits,
    digits_fixture,  # noqa: F401 - the trained model
)
from tests.conftest import require_backend

BUILD = """
[build]
output = "dist"

[bench]
data = "images"
limit = 200
max-accuracy-drop = 2.0

[[models]]
name = "test_resnet"
id = "digits"
checkpoint = "digits.pth"
num-classes = 10
input-size = [3, 32, 32]

[[targets]]
backend = "onnx"

[[targets]]
backend = "onnx"
name = "blank-int8"
mode = "int8"
calibration-data = "blank"
"""


@pytest.fixture(scope="module")
def project(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    require_backend("onnx")
    root = tmp_path_factory.mktemp("bench-build")
    shutil.copy(digits.checkpoint, root / "digits.pth")
    shutil.copytree(digits.test, root / "images")
    (root / "blank" / "x").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "blank" / "x" / "blank.png")
    (root / "timmx.toml").write_text(BUILD)
    return root


def _manifest(root: Path) -> dict:
    return json.loads((root / "dist" / "timmx-build.json").read_text())


def test_build_benches_records_and_gates(cli, project: Path) -> None:
    build_file = project / "timmx.toml"
    result = cli("build", build_file)
    assert result.code == 0, result.err
    bench = _manifest(project)["bench"]
    assert set(bench) == {"digits/onnx", "digits/blank-int8"}
    assert bench["digits/onnx"]["images"] == 200
    assert bench["digits/onnx"]["top1_delta"] == 0.0
    assert bench["digits/blank-int8"]["top1_delta"] < -0.02
    assert bench["digits/blank-int8"]["top1_delta_ci95"][1] < 0

    manifest = project / "dist" / "timmx-build.json"  # `timmx bench` takes a build's manifest
    rows = project / "rows.json"
    listed = cli("bench", manifest, "-d", project / "images", "--limit", "40", "--json", rows)
    assert listed.code == 0, listed.err
    built = [(project / a["artifact"]).resolve() for a in _manifest(project)["jobs"].values()]
    assert [Path(r["artifact"]) for r in json.loads(rows.read_text())["rows"]] == built

    check = cli("build", build_file, "--check")
    assert check.code == 2
    error = check.err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error, error
    assert "1 of 2 artifacts fail the accuracy gate" in error
    assert "digits/blank-int8 top-1" in error and "digits/onnx " not in error

    again = cli("build", build_file)  # nothing changed: nothing built, nothing benched again
    assert again.code == 0, again.err
    assert "timmx bench" not in again.out
    assert _manifest(project)["bench"] == bench

    build_file.write_text(BUILD.replace("max-accuracy-drop = 2.0", "max-accuracy-drop = 50"))
    assert cli("build", build_file, "--check").code == 0

    next(iter((project / "images" / "3").iterdir())).unlink()  # the data changed
    stale = cli("build", build_file, "--check")
    assert stale.code == 2
    assert "not benched on the current data" in stale.err
