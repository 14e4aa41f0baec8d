"""Calibration inputs: loading, limits, and every bad input refused in one line before conversion.

The refusals go through the CLI (litert --mode int8) and stop before anything is converted, so
these tests are fast; the loaders are also tested directly, as the ExecuTorch backend reuses them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_errors import assert_refused, leftovers
from timmx.calibration import (
    Target,
    image_files,
    load_samples,
    random_samples,
    sample_limit,
    to_batches,
)
from timmx.contract import CalibrationSpec
from timmx.errors import InvalidInputError

SMALL = ("--input-size", 3, 32, 32)
INT8 = ("export", "litert", "resnet18", *SMALL, "--mode", "int8", "-o", "m.tflite")
EXPECTED = "(N, 3, 32, 32) float32"


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def write_images(folder: Path, count: int, size=(40, 48), mode="RGB") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        sub = folder / ("cats" if i % 2 else "dogs")
        sub.mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(pixels, mode).save(sub / f"img{i:03d}.png")
    return folder


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (torch.randn(4, 3, 32), ["3 dimensions [4, 3, 32]"]),
        (torch.randn(4, 1, 32, 32), ["[4, 1, 32, 32], 1 channels"]),
        (torch.randn(4, 32, 32, 3), ["channels-last", "permute(0, 3, 1, 2)"]),
        (torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8), ["dtype torch.uint8"]),
        (torch.full((4, 3, 32, 32), float("nan")), ["NaN or Inf"]),
        (torch.randn(4, 3, 32, 32).index_fill_(0, torch.tensor([2]), float("inf")), ["NaN"]),
        (torch.empty(0, 3, 32, 32), ["empty (no samples)"]),
        ({"images": torch.randn(4, 3, 32, 32)}, ["holds a dict, not a tensor"]),
    ],
    ids=["rank", "channels", "nhwc", "dtype", "nan", "inf", "empty", "dict"],
)
def test_bad_calibration_tensor(cli, workdir, data, needles):
    save(workdir / "calib.pt", data)
    result = cli(*INT8, "--calibration-data", "calib.pt")
    assert_refused(result, "calib.pt", EXPECTED, *needles)
    assert leftovers(workdir) == ["calib.pt"]


def test_calibration_tensor_of_another_size_is_resized(tmp_path):
    from timmx.calibration import load_samples

    save(tmp_path / "c.pt", torch.rand(3, 3, 64, 48))
    warnings, warn = collect()
    data = load_samples("c.pt", tmp_path, {}, TARGET, None, warn)
    assert data.shape == (3, 3, 32, 32)
    assert any("64x48 pixels" in w and "resized" in w for w in warnings), warnings
    # bilinear with antialiasing keeps the range of the samples
    assert float(data.min()) >= 0.0 and float(data.max()) <= 1.0


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "is empty"), (b"not a tensor at all" * 10, "cannot be read")],
    ids=["empty-file", "garbage"],
)
def test_unreadable_calibration_file(cli, workdir, content, needle):
    (workdir / "calib.pt").write_bytes(content)
    assert_refused(cli(*INT8, "--calibration-data", "calib.pt"), needle, EXPECTED)


def test_missing_calibration_data(cli, workdir):
    assert_refused(cli(*INT8, "--calibration-data", "nope.pt"), "not found", "nope.pt", EXPECTED)


def test_folder_without_images(cli, workdir):
    (workdir / "calib").mkdir()
    (workdir / "calib" / "notes.txt").write_text("no images here")
    assert_refused(cli(*INT8, "--calibration-data", "calib"), "holds no images", EXPECTED)


def test_unreadable_image_is_named(cli, workdir):
    write_images(workdir / "calib", 3)
    (workdir / "calib" / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    assert_refused(
        cli(*INT8, "--calibration-data", "calib"), "calib/dogs/broken.jpg", "cannot be read"
    )


def test_fewer_samples_than_a_batch(cli, workdir):
    save(workdir / "calib.pt", torch.randn(2, 3, 32, 32))
    assert_refused(
        cli(*INT8, "--batch-size", 4, "--calibration-data", "calib.pt"),
        "at least one batch of 4",
    )


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--mode", "fp16", "--calibration-data", "calib.pt"], ["--calibration-data", "int8"]),
        (["--mode", "dynamic-int8", "--random-calibration"], ["--random-calibration", "int8"]),
        (["--mode", "int8"], ["--calibration-data PATH", "--random-calibration"]),
        (["--mode", "fp32", "--int8-io"], ["--int8-io needs --mode int8"]),
        (["--mode", "int8", "--random-calibration", "--dynamic-batch"], ["--dynamic-batch"]),
        (
            ["--mode", "int8", "--random-calibration", "--int8-io", "--normalize"],
            ["--int8-io cannot be combined with --normalize"],
        ),
        (
            ["--mode", "int8", "--random-calibration", "--calibration-data", "calib.pt"],
            ["exclude each other"],
        ),
        (["--mode", "int4"], ["--mode"]),
    ],
    ids=[
        "calib-fp16",
        "random-dynamic",
        "int8-no-data",
        "int8io-fp32",
        "dynamic",
        "int8io-normalize",
        "both",
        "mode",
    ],
)
def test_bad_flag_combinations_are_refused_first(cli, workdir, monkeypatch, flags, needles):
    import timmx.modeling

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the flags were checked")

    monkeypatch.setattr(timmx.modeling, "prepare", no_model)
    save(workdir / "calib.pt", torch.randn(4, 3, 32, 32))
    result = cli("export", "litert", "resnet18", *SMALL, "-o", "m.tflite", *flags)
    assert_refused(result, *needles)


# The loaders, directly.

TARGET = Target(size=(3, 32, 32), batch_size=2, pixels=False)


def data_config(model) -> dict:
    from timm.data import resolve_data_config

    return resolve_data_config({}, model=model)


def collect() -> tuple[list[str], object]:
    found: list[str] = []
    return found, found.append


def test_limits_and_whole_batches(tmp_path):
    spec = CalibrationSpec(path="c.pt", samples=7, steps=5)
    assert sample_limit(spec, 2) == 7
    assert sample_limit(CalibrationSpec(path="c.pt", steps=3), 4) == 12
    assert sample_limit(CalibrationSpec(path="c.pt"), 4) is None
    warnings, warn = collect()
    batches = to_batches(torch.randn(7, 3, 32, 32), spec, TARGET, warn)
    assert [b.shape[0] for b in batches] == [2, 2, 2]
    assert any("6 of 7 samples" in w for w in warnings)
    assert any("--calibration-steps 5" in w for w in warnings)


def test_tensor_file_is_read_as_float32_and_capped(tmp_path, monkeypatch):
    import timmx.calibration as calibration

    monkeypatch.setattr(calibration, "DEFAULT_MAX_SAMPLES", 4)
    save(tmp_path / "c.pt", torch.randn(6, 3, 32, 32, dtype=torch.float64))
    warnings, warn = collect()
    data = load_samples("c.pt", tmp_path, {}, TARGET, None, warn)
    assert data.dtype == torch.float32 and data.shape == (4, 3, 32, 32)
    assert any("first 4 of the 6" in w for w in warnings)


def test_code_in_a_calibration_pickle_is_refused(tmp_path):
    import os

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    save(tmp_path / "c.pt", {"x": RunsCode()})
    with pytest.raises(InvalidInputError, match="refused"):
        load_samples("c.pt", tmp_path, {}, TARGET, None, print)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("pixels", [True, False])
def test_image_folder_uses_the_models_data_config(tmp_path, pixels):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    write_images(tmp_path / "imgs", 5, size=(50, 40))
    target = Target(size=(3, 32, 32), batch_size=1, pixels=pixels)
    data = load_samples("imgs", tmp_path, data_config(model), target, 4, print)
    assert data.shape == (4, 3, 32, 32) and data.dtype == torch.float32
    if pixels:  # normalisation is in the graph: [0, 1] pixels
        assert float(data.min()) >= 0.0 and float(data.max()) <= 1.0
    else:  # ImageNet mean/std applied: values well outside [0, 1]
        assert float(data.min()) < -1.0 and float(data.max()) > 1.5
    # sorted over class subfolders, so the same folder gives the same calibration
    assert [p.name for p in image_files(tmp_path / "imgs")][:2] == ["img001.png", "img003.png"]


def test_grayscale_model_reads_images_as_one_channel(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=3)
    write_images(tmp_path / "imgs", 2, mode="L")
    target = Target(size=(1, 24, 24), batch_size=1, pixels=False)
    assert load_samples("imgs", tmp_path, data_config(model), target, None, print).shape == (
        2,
        1,
        24,
        24,
    )


def test_random_samples_are_seeded_and_follow_the_input_range():
    pixels = Target(size=(3, 8, 8), batch_size=1, pixels=True)
    a, b = random_samples(pixels, 4), random_samples(pixels, 4)
    assert torch.equal(a, b) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    normal = random_samples(TARGET, 64)
    assert float(normal.min()) < -1.0
