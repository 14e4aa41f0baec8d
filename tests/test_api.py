"""The Python API and the seams under it: the same exports as the CLI, checked in their runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.test_export_onnx import run_onnx


def test_export_returns_the_report_and_matches_pytorch(workdir, make_checkpoint):
    from timmx import export

    ckpt = make_checkpoint("resnet18", num_classes=10)
    seen: list[str] = []
    result = export(
        "onnx",
        "resnet18",
        checkpoint=str(ckpt),
        num_classes=10,
        input_size=(3, 64, 48),
        output="out/m.onnx",
        progress=seen.append,
    )
    artifact = workdir / "out/m.onnx"
    assert result.verification is not None and result.verification.status == "passed"
    assert result.job is not None and result.job.model.num_classes == 10
    assert any("Exporting" in line for line in seen)
    # The same report the CLI writes, beside the artifact.
    assert json.loads(artifact.with_name("m.onnx.json").read_text())["status"] == "success"

    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_onnx(artifact, x.numpy()), expected)


def test_export_model_and_backends_as_upstream(workdir, make_checkpoint):
    import timmx

    assert {"onnx", "torch-export", "torchscript", "litert", "coreml"} <= set(timmx.backends())
    ckpt = make_checkpoint("resnet18", num_classes=10)
    path = timmx.export_model(
        "torchscript",
        "resnet18",
        checkpoint=ckpt,
        num_classes=10,
        input_size=[3, 32, 32],
        mean=(0.5, 0.5, 0.5),  # upstream passes numbers, the CLI a string
        std="0.25,0.25,0.25",
        normalize=True,
        output="m.pt",
    )
    assert path == Path("m.pt") and (workdir / "m.pt").is_file()

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    model = reference_model("resnet18", ckpt, num_classes=10)
    expected = model((x - 0.5) / 0.25).detach().numpy()
    actual = torch.jit.load(str(workdir / "m.pt"))(x).detach().numpy()
    assert_matches(actual, expected)


@pytest.mark.parametrize(
    ("backend", "options", "error", "needle"),
    [
        ("onnx", {"num_clases": 3}, "ConfigurationError", "did you mean 'num_classes'"),
        ("onnxx", {}, "TimmxError", "unknown backend 'onnxx'"),
        ("onnx", {"opset": 3}, "ConfigurationError", "--opset"),
        ("litert", {"mode": "int8"}, "ConfigurationError", "--calibration-data"),
    ],
)
def test_bad_options_raise_one_line_errors(workdir, backend, options, error, needle):
    import timmx

    with pytest.raises(getattr(timmx, error)) as caught:
        timmx.export(backend, "resnet18", input_size=(3, 32, 32), **options)
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    assert list(workdir.iterdir()) == []


def test_a_failed_verification_is_an_export_error(workdir, make_checkpoint):
    import timmx

    # float16 compute cannot match float32 PyTorch exactly: a zero tolerance must refuse it.
    with pytest.raises(timmx.ExportError, match="verification failed"):
        timmx.export(
            "coreml",
            "resnet18",
            checkpoint=make_checkpoint("resnet18", num_classes=10),
            num_classes=10,
            input_size=(3, 32, 32),
            atol=0.0,
            rtol=0.0,
        )
    assert list(workdir.iterdir()) == []


def test_importing_timmx_imports_no_torch():
    code = (
        "import sys, timmx; from timmx import export, export_model, backends; backends(); "
        "print(sorted(m for m in ('torch', 'timm', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def export_resnet18(backend: str, make_checkpoint, output: str):
    """`timmx.export` of a 10-class resnet18 at 32x32 through the API."""
    from timmx import export

    checkpoint = make_checkpoint("resnet18", num_classes=10)
    return export(
        backend, "resnet18", checkpoint=checkpoint, num_classes=10, input_size=(3, 32, 32),
        output=output,
    )  # fmt: skip


def test_an_export_leaves_the_callers_warning_filters_alone(workdir, make_checkpoint):
    before = list(warnings.filters)
    export_resnet18("torch-export", make_checkpoint, "m.pt2")
    assert warnings.filters == before


def test_the_reports_timings_add_up(workdir, make_checkpoint):
    result = export_resnet18("onnx", make_checkpoint, "m.onnx")
    timings = dict(result.timings)
    total = timings.pop("total_s")
    assert {"import_s", "model_s", "export_s", "verify_s", "report_s"} <= set(timings)
    # The phases are disjoint parts of the whole: together no more than it (the bookkeeping
    # between them is the rest). No measured figure stands in for this; the report rounds each
    # to the millisecond, so the sum may pass the total by half a millisecond per value.
    assert all(seconds >= 0 for seconds in timings.values()), timings
    assert sum(timings.values()) <= total + 0.0005 * (len(timings) + 1), timings


def test_a_second_backend_of_the_same_name_is_refused():
    from timmx.backends import register
    from timmx.backends.onnx import OnnxBackend

    class Impostor(OnnxBackend):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register(Impostor)


def test_the_runner_is_chosen_by_a_function():
    from timmx.runners.base import Runner
    from timmx.runners.docker import DockerRunner
    from timmx.runners.local import LocalRunner
    from timmx.runners.spec import DockerSpec, LocalSpec, open_runner

    local = open_runner(LocalSpec())
    docker = open_runner(DockerSpec(memory="2g", timeout_s=60))
    assert isinstance(local, LocalRunner) and isinstance(local, Runner)
    assert isinstance(docker, DockerRunner) and isinstance(docker, Runner)
    assert (docker.memory, docker.timeout_s) == ("2g", 60)


def test_tolerance_overrides_reach_the_check(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    args = ("export", "onnx", "resnet18", "-c", ckpt, "--num-classes", 10, "--input-size", 3, 32)
    result = cli(*args, 32, "--atol", 0.5, "--rtol", 0.25, "-o", "m.onnx")
    assert result.code == 0, result.err
    verification = result.report(workdir / "m.onnx")["verification"]
    assert (verification["atol"], verification["rtol"]) == (0.5, 0.25)
