"""Every bad input: one line that says what to do, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

SMALL = ("--input-size", 3, 32, 32)


def assert_refused(result, *needles: str) -> None:
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".pth", ".bin", ".txt")))


def test_unknown_model_suggests_close_names(cli, workdir):
    assert_refused(cli("export", "onnx", "resnet_18", *SMALL), "unknown model", "resnet18")
    assert leftovers(workdir) == []


def test_unknown_backend(cli):
    result = cli("export", "onnxx", "resnet18")
    assert result.code == 2
    assert "onnxx" in result.err


def test_bad_flag_is_one_line(cli):
    assert_refused(cli("export", "onnx", "resnet18", "--opset", "many"), "--opset")


def test_missing_checkpoint(cli, workdir):
    assert_refused(cli("export", "onnx", "resnet18", "-c", "nope.pth", *SMALL), "not found")


def test_truncated_checkpoint(cli, workdir, make_checkpoint):
    data = make_checkpoint("resnet18").read_bytes()
    (workdir / "cut.pth").write_bytes(data[: len(data) // 2])
    assert_refused(cli("export", "onnx", "resnet18", "-c", "cut.pth", *SMALL), "truncated")
    assert leftovers(workdir) == []


def test_file_that_is_not_a_checkpoint(cli, workdir):
    (workdir / "notes.txt").write_text("these are not weights\n" * 20)
    assert_refused(
        cli("export", "onnx", "resnet18", "-c", "notes.txt", *SMALL), "not a PyTorch checkpoint"
    )


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_that_carries_code_is_refused_unexecuted(cli, workdir, writer):
    payload = {"state_dict": _RunsCode()}
    if writer == "pickle":
        (workdir / "evil.pth").write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, workdir / "evil.pth")
    assert_refused(cli("export", "onnx", "resnet18", "-c", "evil.pth", *SMALL), "refused", "system")
    assert not (workdir / "pwned").exists()


def test_checkpoint_for_another_architecture(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("mobilenetv3_small_100")
    assert_refused(
        cli("export", "onnx", "resnet18", "-c", ckpt, *SMALL),
        "does not fit resnet18",
        "missing key",
    )


def test_checkpoint_with_another_class_count_names_the_fix(cli, workdir, make_checkpoint):
    ckpt = make_checkpoint("resnet18", num_classes=7)
    assert_refused(
        cli("export", "onnx", "resnet18", "-c", ckpt, *SMALL),
        "fc.weight: checkpoint [7, 512] vs model [1000, 512]",
        "--num-classes 7",
    )


@pytest.mark.parametrize("wrap", ["state_dict", "model", "state_dict_ema", "module"])
def test_wrapped_checkpoints_load(cli, workdir, make_checkpoint, wrap):
    """The weights inside the wrapper are the ones exported: compared with the plain state
    dict's model, loaded by us."""
    from tests.conftest import assert_matches, reference_model

    ckpt = make_checkpoint("resnet18", wrap=wrap, num_classes=3)
    result = cli("export", "torchscript", "resnet18", "-c", ckpt, "--num-classes", 3, *SMALL)
    assert result.code == 0, result.err
    plain = make_checkpoint("resnet18", num_classes=3)  # same seed, same weights, unwrapped
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    expected = reference_model("resnet18", plain, num_classes=3)(x).detach().numpy()
    actual = torch.jit.load(str(workdir / "resnet18.pt"))(x).detach().numpy()
    assert_matches(actual, expected)


def test_bad_input_size(cli, workdir):
    assert_refused(cli("export", "onnx", "resnet18", "--input-size", 3, 0, 32), "input")
    assert_refused(cli("export", "onnx", "resnet18", "--input-size", 1, 32, 32), "channels")
    assert_refused(
        cli("export", "onnx", "vit_tiny_patch16_224", "--input-size", 3, 64, 64),
        "cannot run on input",
        "--input-size 3 224 224",
    )
    assert leftovers(workdir) == []


def test_mean_without_normalize(cli, workdir):
    assert_refused(
        cli("export", "onnx", "resnet18", "--mean", "0.5,0.5,0.5", *SMALL), "--normalize"
    )


def test_mean_with_wrong_channel_count(cli, workdir):
    assert_refused(
        cli("export", "onnx", "resnet18", "--normalize", "--mean", "0.5,0.5", *SMALL), "--mean"
    )


def test_torch_export_dynamic_batch_needs_batch_two(cli, workdir):
    assert_refused(
        cli("export", "torch-export", "resnet18", "--dynamic-batch", *SMALL), "--batch-size 2"
    )


def test_unwritable_output_path(cli, workdir):
    (workdir / "a-file.txt").write_text("x")
    assert_refused(cli("export", "onnx", "resnet18", "-o", "a-file.txt/m.onnx", *SMALL), "--output")


def test_output_with_the_wrong_extension(cli, workdir):
    assert_refused(cli("export", "onnx", "resnet18", "-o", "m.tflite", *SMALL), ".onnx")


def test_unavailable_device(cli, workdir):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_refused(cli("export", "onnx", "resnet18", "--device", "cuda", *SMALL), "CUDA")


def test_failed_verification_keeps_the_old_artifact(cli, workdir, monkeypatch):
    from timmx.backends.onnx import OnnxBackend

    (workdir / "m.onnx").write_bytes(b"previous verified artifact")
    original = OnnxBackend.load_runtime

    def broken_runtime(self, artifact, options):
        run = original(self, artifact, options)
        return lambda x: run(x) + 0.5  # what a miscompiled graph looks like

    monkeypatch.setattr(OnnxBackend, "load_runtime", broken_runtime)
    assert_refused(cli("export", "onnx", "resnet18", "-o", "m.onnx", *SMALL), "verification failed")
    assert (workdir / "m.onnx").read_bytes() == b"previous verified artifact"
    assert sorted(p.name for p in workdir.iterdir()) == ["m.onnx"]


def test_debug_shows_the_traceback(cli, workdir):
    result = cli("--debug", "export", "onnx", "resnet_18", *SMALL)
    assert result.code == 2
    assert "Traceback" in result.err


def test_debug_is_per_invocation(cli, workdir):
    assert "Traceback" in cli("--debug", "export", "onnx", "resnet_18", *SMALL).err
    assert "Traceback" not in cli("export", "onnx", "resnet_18", *SMALL).err
