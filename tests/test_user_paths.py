"""What users hit, each compared numerically with timm by our own runtimes: non-square inputs
(a height/width swap shows), fixed batches above 1, dynamic batches run at another size, custom
normalisation and one-channel input, --no-verify, --atol/--rtol, --seed, --no-reparameterize,
re-exports over folder artifacts, and concurrent exports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.report_files import assert_report_lists_the_files
from tests.test_errors import assert_refused
from tests.test_export_onnx import run_onnx

H, W = 32, 48  # non-square: a swap of height and width cannot pass


def _run(backend: str, artifact: Path, x: np.ndarray) -> np.ndarray:
    """The artifact in its own runtime, as a user would load it."""
    if backend == "onnx":
        return run_onnx(artifact, x)
    if backend == "torch-export":
        return torch.export.load(str(artifact)).module()(torch.from_numpy(x)).detach().numpy()
    if backend == "torchscript":
        return torch.jit.load(str(artifact))(torch.from_numpy(x)).detach().numpy()
    if backend == "litert":
        from tests.test_export_litert import run_tflite

        return run_tflite(artifact, x)
    if backend == "ncnn":
        from tests.test_export_ncnn import run_ncnn

        return run_ncnn(artifact, x, fp16=False)
    if backend == "coreml":
        from tests.test_export_coreml import run_program

        return run_program(artifact, x)["output"]
    raise AssertionError(backend)


SUFFIX = {
    "onnx": ".onnx",
    "torch-export": ".pt2",
    "torchscript": ".pt",
    "litert": ".tflite",
    "ncnn": ".ncnn",
    "coreml": ".mlpackage",
}
# Each backend's exact-precision flags, so one bound fits all.
EXACT = {"ncnn": ["--no-fp16"], "coreml": ["--compute-precision", "float32"]}
# LiteRT and ncnn run one image at a time here; the others take the batch of 2 as exported.
BATCH = {"litert": 1, "ncnn": 1}


@pytest.mark.parametrize("backend", SUFFIX)
def test_non_square_input_and_a_fixed_batch(cli, workdir, make_checkpoint, backend):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    batch = BATCH.get(backend, 2)
    artifact = workdir / f"m{SUFFIX[backend]}"
    result = cli(
        "export", backend, "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, H, W, "--batch-size", batch, *EXACT.get(backend, []), "-o", artifact,
    )  # fmt: skip
    assert result.code == 0, result.err
    x = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(31))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    actual = _run(backend, artifact, x.numpy())
    assert actual.shape == (batch, 10)
    assert_matches(actual, expected)
    assert_report_lists_the_files(artifact)


def test_torchscript_dynamic_batch_runs_at_another_size(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("mobilenetv3_small_100")
    result = cli(
        "export", "torchscript", "mobilenetv3_small_100", "-c", ckpt, "--input-size", 3, H, W,
        "--batch-size", 2, "--dynamic-batch", "-o", "d.pt",
    )  # fmt: skip
    assert result.code == 0, result.err
    for batch in (1, 5):
        x = torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(batch))
        expected = reference_model("mobilenetv3_small_100", ckpt)(x).detach().numpy()
        assert_matches(_run("torchscript", workdir / "d.pt", x.numpy()), expected)


def test_custom_normalisation_on_one_channel(cli, workdir, make_checkpoint):
    """Grey-scale input with its own mean and std baked into the graph."""
    ckpt = make_checkpoint("resnet18", in_chans=1)
    result = cli(
        "export", "onnx", "resnet18", "-c", ckpt, "--in-chans", 1, "--input-size", 1, H, W,
        "--normalize", "--mean", "0.3", "--std", "0.2", "-o", "g.onnx",
    )  # fmt: skip
    assert result.code == 0, result.err
    pixels = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(2))
    model = reference_model("resnet18", ckpt, in_chans=1)
    expected = model((pixels - 0.3) / 0.2).detach().numpy()
    assert_matches(run_onnx(workdir / "g.onnx", pixels.numpy()), expected)
    # and not the model's default ImageNet statistics
    default = model((pixels - 0.485) / 0.229).detach().numpy()
    assert np.abs(default - expected).max() > 1e-2


def test_three_channel_mean_and_std(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18")
    result = cli(
        "export", "onnx", "resnet18", "-c", ckpt, "--input-size", 3, H, W, "--normalize",
        "--mean", "0.2,0.4,0.6", "--std", "0.5,0.25,0.125", "-o", "n.onnx",
    )  # fmt: skip
    assert result.code == 0, result.err
    pixels = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3))
    mean = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 0.125]).view(1, 3, 1, 1)
    expected = reference_model("resnet18", ckpt)((pixels - mean) / std).detach().numpy()
    assert_matches(run_onnx(workdir / "n.onnx", pixels.numpy()), expected)


def test_no_verify_still_exports_the_model(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18")
    result = cli("export", "onnx", "resnet18", "-c", ckpt, "--input-size", 3, H, W, "--no-verify")
    assert result.code == 0, result.err
    report = result.report(workdir / "resnet18.onnx")
    assert report["verification"]["status"] == "skipped" and report["verification"]["checks"] == []
    assert "verified numerically" not in result.out + result.err
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(4))
    expected = reference_model("resnet18", ckpt)(x).detach().numpy()
    assert_matches(run_onnx(workdir / "resnet18.onnx", x.numpy()), expected)


def test_atol_and_rtol_decide(cli, workdir, make_checkpoint):
    """float16 weights differ from float32 by more than 1e-9: refused, nothing written; a bound
    the user loosens is the one applied and recorded."""
    ckpt = make_checkpoint("resnet18")
    base = ("export", "litert", "resnet18", "-c", ckpt, "--input-size", 3, H, W, "--mode", "fp16")
    tight = cli(*base, "--atol", "1e-9", "--rtol", "0", "-o", "t.tflite")
    assert_refused(tight, "max abs error")
    assert not (workdir / "t.tflite").exists()
    loose = cli(*base, "--atol", "0.5", "--rtol", "0", "-o", "l.tflite")
    assert loose.code == 0, loose.err
    verification = loose.report(workdir / "l.tflite")["verification"]
    assert (verification["atol"], verification["rtol"]) == (0.5, 0)
    assert verification["checks"][0]["max_abs_error"] > 1e-9


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_seed_decides_random_weights(cli, workdir):
    args = ("export", "onnx", "resnet18", "--input-size", 3, H, W)
    for seed, out in ((1, "a.onnx"), (1, "b.onnx"), (2, "c.onnx")):
        assert cli(*args, "--seed", seed, "-o", out).code == 0
    assert _sha(workdir / "a.onnx") == _sha(workdir / "b.onnx")
    assert _sha(workdir / "a.onnx") != _sha(workdir / "c.onnx")


def test_no_reparameterize_keeps_the_branches(cli, workdir, make_checkpoint):
    import onnx

    ckpt = make_checkpoint("repvgg_a0")
    args = ("export", "onnx", "repvgg_a0", "-c", ckpt, "--input-size", 3, H, W)
    assert cli(*args, "-o", "fused.onnx").code == 0
    assert cli(*args, "--no-reparameterize", "-o", "branches.onnx").code == 0

    def convs(name: str) -> int:
        return sum(node.op_type == "Conv" for node in onnx.load(workdir / name).graph.node)

    assert convs("branches.onnx") > convs("fused.onnx")  # 3x3, 1x1 (and identity) kept apart
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(6))
    expected = reference_model("repvgg_a0", ckpt)(x).detach().numpy()
    for name in ("fused.onnx", "branches.onnx"):
        assert_matches(run_onnx(workdir / name, x.numpy()), expected, rel=1e-3)


@pytest.mark.parametrize(
    ("backend", "name"),
    [("ncnn", "m.ncnn"), ("ncnn", "resnet18_ncnn"), ("coreml", "m.mlpackage")],
)
def test_re_export_over_a_folder_artifact(cli, workdir, make_checkpoint, backend, name):
    """The second export replaces the first whole (ncnn's folder under upstream's name too);
    a file the user put into the folder is not timmx's to remove: refused, nothing touched."""
    artifact = workdir / name
    flags = ["--input-size", 3, H, W, *EXACT.get(backend, []), "-o", artifact]
    first = make_checkpoint("resnet18", num_classes=10)
    assert cli("export", backend, "resnet18", "-c", first, "--num-classes", 10, *flags).code == 0
    second = make_checkpoint("resnet18", num_classes=7)
    result = cli("export", backend, "resnet18", "-c", second, "--num-classes", 7, *flags)
    assert result.code == 0, result.err
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(7))
    expected = reference_model("resnet18", second, num_classes=7)(x).detach().numpy()
    assert_matches(_run(backend, artifact, x.numpy()), expected)
    assert_report_lists_the_files(artifact)

    (artifact / "notes.txt").write_text("the user's own")
    before = {p: p.read_bytes() for p in artifact.rglob("*") if p.is_file()}
    result = cli("export", backend, "resnet18", "-c", first, "--num-classes", 10, *flags)
    assert_refused(result, "notes.txt", "timmx did not make")
    assert {p: p.read_bytes() for p in artifact.rglob("*") if p.is_file()} == before


def test_two_concurrent_exports_to_one_folder(workdir, make_checkpoint):
    """Two processes at once, one output folder and even one destination: each publishes whole,
    and the artifact left is a complete one whose report lists it."""
    ckpt = make_checkpoint("resnet18")
    argv = [sys.executable, "-m", "timmx", "export", "onnx", "resnet18", "-c", str(ckpt)]
    argv += ["--input-size", "3", str(H), str(W)]
    outputs = ["out/a.onnx", "out/same.onnx", "out/same.onnx", "out/b.onnx"]
    procs = [
        subprocess.Popen([*argv, "-o", out], cwd=workdir, stderr=subprocess.PIPE, text=True)
        for out in outputs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    x = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(8))
    expected = reference_model("resnet18", ckpt)(x).detach().numpy()
    for name in ("a.onnx", "same.onnx", "b.onnx"):
        assert_matches(run_onnx(workdir / "out" / name, x.numpy()), expected)
        assert_report_lists_the_files(workdir / "out" / name)
    assert sorted(p.name for p in (workdir / "out").iterdir()) == [
        "a.onnx",
        "a.onnx.json",
        "b.onnx",
        "b.onnx.json",
        "same.onnx",
        "same.onnx.json",
    ]
