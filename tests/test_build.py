"""`timmx build`: a build file's models x targets, checked in their runtimes, cached by content."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builds import build_file, check_two_target_build, write_project
from tests.conftest import assert_matches, reference_model
from tests.test_errors import assert_refused
from tests.test_export_onnx import run_onnx

BUILD = build_file(sizes={"mobilenetv3_small_100": (48, 40)})


@pytest.fixture
def project(workdir, make_checkpoint) -> Path:
    return write_project(workdir, make_checkpoint, BUILD)


def manifest(root: Path) -> dict:
    return json.loads((root / "dist/timmx-build.json").read_text())


def mtimes(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in (root / "dist").rglob("*")
        if p.is_file() and p.name != "timmx-build.json"
    }


def test_build_exports_every_pair_and_each_matches_pytorch(cli, project):
    result = cli("build", "--jobs", 2)
    assert result.code == 0, result.err
    sizes = {"resnet18": (32, 32), "mobilenetv3_small_100": (48, 40)}
    jobs = check_two_target_build(project, sizes)
    for entry in jobs.values():  # the manifest's hashes are the files'
        folder = (project / entry["artifact"]).parent
        for file in entry["artifacts"]:
            data = (folder / file["path"]).read_bytes()
            assert len(data) == file["bytes"]
            import hashlib

            assert hashlib.sha256(data).hexdigest() == file["sha256"]
        assert entry["verification"] == "passed" and len(entry["key"]) == 64


def test_rebuild_skips_what_is_fresh_and_redoes_what_changed(cli, project, make_checkpoint):
    assert cli("build").code == 0
    before = mtimes(project)
    again = cli("build")
    assert again.code == 0 and again.out.count("cached") == 4, again.out
    assert mtimes(project) == before
    assert cli("build", "--check").code == 0

    # A new checkpoint for one model: only that model's jobs are stale and rebuilt.
    state = torch.load(project / "ckpt/resnet18.pth", weights_only=True)
    state["fc.bias"] += 1.0
    torch.save(state, project / "ckpt/resnet18.pth")
    assert_refused(cli("build", "--check"), "2 of 4", "resnet18/onnx stale")
    assert cli("build").code == 0
    after = mtimes(project)
    changed = {path for path in before if before[path] != after[path]}
    assert changed and all(path.startswith("dist/resnet18/") for path in changed), changed
    x = torch.randn(1, 3, 32, 32)
    expected = reference_model("resnet18", project / "ckpt/resnet18.pth", num_classes=10)(x)
    actual = run_onnx(project / "dist/resnet18/onnx/resnet18.onnx", x.numpy())
    assert_matches(actual, expected.detach().numpy())


def test_check_names_altered_and_missing_artifacts(cli, project):
    assert cli("build").code == 0
    artifact = project / "dist/resnet18/torch-export/resnet18.pt2"
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0xFF
    artifact.write_bytes(bytes(data))
    (project / "dist/mobilenetv3_small_100/onnx/mobilenetv3_small_100.onnx").unlink()
    assert_refused(
        cli("build", "--check"),
        "resnet18/torch-export altered",
        "mobilenetv3_small_100/onnx missing",
    )
    assert cli("build").code == 0  # and a build mends both
    assert cli("build", "--check").code == 0


def test_check_counts_a_skipped_verification_as_unverified(cli, project):
    """An artifact nobody compared with PyTorch (--no-verify here; Core ML's .mlmodel numerics
    off macOS likewise) does not pass the CI gate, however fresh."""
    text = (project / "timmx.toml").read_text()
    (project / "timmx.toml").write_text(
        text.replace('backend = "onnx"', 'backend = "onnx"\nverify = false')
    )
    assert cli("build").code == 0
    jobs = manifest(project)["jobs"]
    assert jobs["resnet18/onnx"]["verification"] == "skipped"
    assert_refused(cli("build", "--check"), "2 of 4", "resnet18/onnx unverified")


def test_one_failure_does_not_stop_the_rest(cli, project, make_checkpoint):
    (project / "ckpt/resnet18.pth").write_bytes(make_checkpoint("resnet18").read_bytes())
    result = cli("build")
    assert result.code == 2
    assert "2 of 4 jobs failed" in result.err and "resnet18/onnx" in result.err
    assert "num-classes" in result.out  # the summary gives each failure's one-line reason
    assert (project / "dist/mobilenetv3_small_100/onnx/mobilenetv3_small_100.onnx").is_file()
    assert not (project / "dist/resnet18/onnx").exists() or not any(
        (project / "dist/resnet18/onnx").iterdir()
    )
    assert sorted(manifest(project)["jobs"]) == [
        "mobilenetv3_small_100/onnx",
        "mobilenetv3_small_100/torch-export",
    ]


def test_dry_run_plans_without_building(cli, project):
    result = cli("build", "--dry-run")
    assert result.code == 0 and "4 jobs" in result.out and "new" in result.out
    assert not (project / "dist").exists()


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (
            ("num-classes = 10", "num-clases = 10"),
            ["models[0] (resnet18)", "num-clases", "num-classes"],
        ),
        (('backend = "onnx"', 'backend = "onnxx"'), ["targets[0]", "onnxx"]),
        (
            ("dynamic-batch = true", 'dynamic-batch = true\ndelegate = "xnnpack"'),
            ["targets[0] (onnx)", "'delegate'"],
        ),
        (
            ('[[targets]]\nbackend = "torch-export"', '[[targets]]\nbackend = "onnx"'),
            ["two targets", "name"],
        ),
        (
            ("num-classes = 10\n", 'num-classes = 10\nexclude = ["tflite"]\n'),
            ["no target is named 'tflite'"],
        ),
        (
            ("num-classes = 10\n", 'num-classes = 10\noutput = "x.onnx"\n'),
            ["'output' is set by the build"],
        ),
        (("input-size = [3, 32, 32]", "input-size = [3, 32]"), ["--input-size takes C H W"]),
        (("[build]", "[biuld]"), ["unknown table 'biuld'"]),
        (("[defaults]", "[defaults"), ["not valid TOML"]),
    ],
)
def test_a_bad_build_file_is_one_line_naming_the_place(cli, project, change, needles):
    text = (project / "timmx.toml").read_text()
    assert change[0] in text
    (project / "timmx.toml").write_text(text.replace(change[0], change[1], 1))
    assert_refused(cli("build"), *needles)
    assert not (project / "dist").exists()


def test_exclusions_overrides_and_pyproject(cli, project):
    text = (
        BUILD.replace(
            "num-classes = 10\ninput-size = [3, 48, 40]",
            'num-classes = 10\ninput-size = [3, 48, 40]\nexclude = ["onnx"]\n'
            "overrides = { torch-export = { batch-size = 2 } }",
        )
        .replace("[build]", "[tool.timmx.build]")
        .replace("[defaults]", "[tool.timmx.defaults]")
    )
    text = text.replace("[[models]]", "[[tool.timmx.models]]").replace(
        "[[targets]]", "[[tool.timmx.targets]]"
    )
    (project / "timmx.toml").unlink()
    (project / "pyproject.toml").write_text('[project]\nname = "zoo"\n' + text)
    assert cli("build").code == 0
    jobs = manifest(project)["jobs"]
    assert "mobilenetv3_small_100/onnx" not in jobs and len(jobs) == 3
    report = json.loads(
        (
            project / "dist/mobilenetv3_small_100/torch-export/mobilenetv3_small_100.pt2.json"
        ).read_text()
    )
    assert report["job"]["input"]["batch_size"] == 2


def test_schema_build_lists_each_backends_keys(cli):
    result = cli("schema", "build")
    assert result.code == 0
    schema = json.loads(result.out)
    targets = {
        t["properties"]["backend"]["const"]: t
        for t in schema["properties"]["targets"]["items"]["oneOf"]
    }
    assert "nhwc-input" in targets["litert"]["properties"]
    assert "nhwc-input" not in targets["onnx"]["properties"]
    assert "num-classes" in schema["properties"]["defaults"]["properties"]


def test_int8_litert_calibrated_in_a_build(cli, workdir, make_checkpoint):
    from tests.test_export_litert import run_tflite

    (workdir / "ckpt").mkdir()
    (workdir / "ckpt/r.pth").write_bytes(make_checkpoint("resnet18", num_classes=10).read_bytes())
    torch.save(
        torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)), workdir / "calib.pt"
    )
    (workdir / "timmx.toml").write_text(
        '[[models]]\nname = "resnet18"\ncheckpoint = "ckpt/r.pth"\nnum-classes = 10\n'
        "input-size = [3, 32, 32]\n\n"
        '[[targets]]\nbackend = "litert"\nname = "tflite-int8"\nmode = "int8"\n'
        'calibration-data = "calib.pt"\n'
    )
    result = cli("build")
    assert result.code == 0, result.err
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    expected = (
        reference_model("resnet18", workdir / "ckpt/r.pth", num_classes=10)(x).detach().numpy()
    )
    actual = run_tflite(workdir / "dist/resnet18/tflite-int8/resnet18.tflite", x.numpy())
    scale = float(np.abs(expected).max())
    assert float(np.abs(actual - expected).max()) <= 0.15 * scale
    assert os.path.getsize(workdir / "dist/resnet18/tflite-int8/resnet18.tflite") < 20e6


def test_the_same_file_twice_gives_the_same_bytes(cli, workdir, make_checkpoint):
    """Reproducible backends (README): onnx, torch-export, torchscript, litert (also int8)."""
    import shutil

    (workdir / "ckpt").mkdir()
    (workdir / "ckpt/r.pth").write_bytes(make_checkpoint("resnet18", num_classes=10).read_bytes())
    torch.save(
        torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4)), workdir / "c.pt"
    )
    targets = "".join(
        f'\n[[targets]]\nbackend = "{b}"\n'
        for b in ("onnx", "torch-export", "torchscript", "litert")
    )
    (workdir / "timmx.toml").write_text(
        "[defaults]\ninput-size = [3, 32, 32]\nnum-classes = 10\n\n"
        '[[models]]\nname = "resnet18"\ncheckpoint = "ckpt/r.pth"\n'
        + targets
        + '\n[[targets]]\nbackend = "litert"\nname = "int8"\nmode = "int8"\n'
        + 'calibration-data = "c.pt"\n'
    )
    hashes = []
    for _ in range(2):
        shutil.rmtree(workdir / "dist", ignore_errors=True)
        assert cli("build", "--jobs", 2).code == 0
        jobs = manifest(workdir)["jobs"]
        hashes.append({job: [f["sha256"] for f in e["artifacts"]] for job, e in jobs.items()})
    assert len(hashes[0]) == 5 and hashes[0] == hashes[1]


def test_ctrl_c_leaves_nothing_half_written(project):
    import signal
    import subprocess
    import sys
    import time

    from tests.isolated.helpers import interruptible

    proc = subprocess.Popen(
        [sys.executable, "-m", "timmx", "build", "--jobs", "2"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    deadline = time.monotonic() + 120
    staging: list[Path] = []
    while time.monotonic() < deadline and not staging and proc.poll() is None:
        staging = [p for p in (project / "dist").rglob(".*") if p.is_dir()]
        time.sleep(0.05)
    assert staging, "no export was under way to interrupt"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert [p for p in (project / "dist").rglob(".*")] == []  # no staging folder
    for entry in manifest(project)["jobs"].values():  # what is recorded is whole
        assert (project / entry["artifact"]).exists()
    workers = subprocess.run(
        ["pgrep", "-f", f"timmx.worker --serve {project}"], capture_output=True
    )
    assert workers.stdout.strip() == b""


def test_shared_calibration_reaches_only_the_modes_that_calibrate(workdir):
    """[defaults] calibration keys go to int8 targets; a fp32 target set on its own refuses."""
    from timmx.build.plan import plan_build
    from timmx.build.spec import load_build_file

    torch.save(torch.randn(4, 3, 32, 32), workdir / "c.pt")
    text = (
        '[defaults]\ninput-size = [3, 32, 32]\ncalibration-data = "c.pt"\n\n'
        '[[models]]\nname = "resnet18"\n\n'
        '[[targets]]\nbackend = "onnx"\n\n'
        '[[targets]]\nbackend = "onnx"\nname = "onnx-int8"\nmode = "int8"\n\n'
        '[[targets]]\nbackend = "openvino"\nmode = "int8"\n\n'
        '[[targets]]\nbackend = "litert"\n'
    )
    (workdir / "timmx.toml").write_text(text)
    jobs = {p.target: p.job for p in plan_build(load_build_file(workdir / "timmx.toml"))}
    assert jobs["onnx"].calibration is None and jobs["litert"].calibration is None
    assert jobs["onnx-int8"].calibration is not None and jobs["openvino"].calibration is not None

    from timmx.backends import get_backend

    fp32 = get_backend("onnx")
    (workdir / "timmx.toml").write_text(
        text + '\n[[targets]]\nbackend = "onnx"\nname = "bad"\ncalibration-data = "c.pt"\n'
    )
    bad = next(p for p in plan_build(load_build_file(workdir / "timmx.toml")) if p.target == "bad")
    with pytest.raises(Exception, match="--mode int8"):
        fp32.check(bad.job, fp32.parse_options(bad.job.options))
