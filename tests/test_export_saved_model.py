"""TensorFlow SavedModel exports through onnx2tf: the folder loaded by us in TensorFlow (its
`serving_default` signature) against timm at two batch sizes, NHWC input, a clean `--json`
stdout, nothing of onnx2tf's left behind, refusals, and a build's folder artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builds import build_file, copy_project, run_build, write_project
from tests.conftest import assert_matches, reference_model, require_backend
from tests.test_errors import assert_refused
from timmx.backends.saved_model import import_tensorflow

require_backend("saved-model")

MODEL = "test_resnet"
SIZE = ("--input-size", 3, 32, 48)  # non-square: a swap of height and width cannot pass
LAYOUT = {"assets", "fingerprint.pb", "saved_model.pb", "variables"}


def run_saved_model(path: Path, x: np.ndarray, nhwc: bool = False) -> np.ndarray:
    """The SavedModel in TensorFlow, apart from timmx: `serving_default` on NCHW samples (made
    NHWC for an `--nhwc-input` model), all at once where its batch is dynamic, else one by one."""
    tf = import_tensorflow()  # after triton (see there), then as any user of the folder would
    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if nhwc else x, dtype=np.float32)
    batches = [x] if spec.shape[0] is None else [s[None] for s in x]
    return np.concatenate([signature(input=tf.constant(b))["output"].numpy() for b in batches])


@pytest.fixture(scope="module")
def ckpt(make_checkpoint) -> Path:
    return make_checkpoint(MODEL, num_classes=10)


def export(cli, ckpt: Path, *flags) -> object:
    return cli("export", "saved-model", MODEL, "-c", ckpt, "--num-classes", 10, *SIZE, *flags)


def test_dynamic_batch_matches_timm_and_json_stays_clean(cli_fd, workdir, ckpt):
    # at the file descriptors: TensorFlow logs from C++, past sys.stdout
    result = export(cli_fd, ckpt, "--dynamic-batch", "-o", "r.saved_model", "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)  # the --json report on stdout, and nothing else
    assert report["verification"]["status"] == "passed"
    details = report["verification"]["details"]
    assert details["layout"] == "NCHW" and details["input_shape"] == [None, 3, 32, 48]
    assert details["output_shape"] == [None, 10]
    assert "oneDNN" not in result.out + result.err and "cuInit" not in result.out + result.err
    # only the folder and its report: no .onnx, no onnx2tf .tflite or .json
    assert sorted(p.name for p in workdir.iterdir()) == ["r.saved_model", "r.saved_model.json"]
    assert {p.name for p in (workdir / "r.saved_model").iterdir()} <= LAYOUT

    model = reference_model(MODEL, ckpt, num_classes=10)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 48, generator=torch.Generator().manual_seed(batch))
        actual = run_saved_model(workdir / "r.saved_model", x.numpy())
        assert actual.shape == (batch, 10)
        assert_matches(actual, model(x).detach().numpy())


def test_convnext_nhwc_input_in_a_folder_of_any_name(cli, workdir, make_checkpoint):
    """ConvNeXt, whose depthwise kernels onnx2tf makes outside any Keras layer (untracked, they
    were once left out of the SavedModel), with channels-last input, in a folder of any name."""
    ckpt = make_checkpoint("test_convnext", num_classes=10)
    result = cli(
        "export", "saved-model", "test_convnext", "-c", ckpt, "--num-classes", 10, *SIZE,
        "--nhwc-input", "-o", "test_convnext_saved_model",
    )  # fmt: skip
    assert result.code == 0, result.err
    folder = workdir / "test_convnext_saved_model"
    assert {p.name for p in folder.iterdir()} <= LAYOUT
    assert (folder / "saved_model.pb").is_file()
    tf = import_tensorflow()
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.shape.as_list() == [1, 32, 48, 3]
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(4))
    actual = run_saved_model(folder, x.numpy(), nhwc=True)
    expected = reference_model("test_convnext", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(actual, expected)


def test_a_model_onnx2tf_cannot_convert_is_refused(cli, workdir):
    """EdgeNeXt's L2 norm over one axis (ONNX ReduceL2): onnx2tf hands tf.norm a numpy integer
    axis, which TensorFlow refuses; onnx and openvino export it."""
    result = cli(
        "export", "saved-model", "edgenext_xx_small", "--num-classes", 10,
        "--input-size", 3, 32, 32, "-o", "e.saved_model",
    )  # fmt: skip
    assert_refused(result, "onnx2tf cannot convert edgenext_xx_small", "tf.norm", "onnx, openvino")
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(("flags", "words"), [(("--opset", "12"), "--opset")])
def test_bad_options_are_one_line(cli, workdir, ckpt, flags, words):
    assert_refused(export(cli, ckpt, *flags), words)
    assert list(workdir.iterdir()) == []


ARTIFACT = "dist/resnet18/saved-model/resnet18.saved_model"


@pytest.fixture(scope="module")
def built(tmp_path_factory, make_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("saved-model-build")
    text = build_file(models=("resnet18",), targets='[[targets]]\nbackend = "saved-model"\n')
    return run_build(write_project(root, make_checkpoint, text))


def test_a_build_gates_its_folder_artifact(cli, workdir, built):
    project = copy_project(built, workdir)
    assert (project / ARTIFACT / "saved_model.pb").is_file()
    result = cli("build", "--check")
    assert result.code == 0, result.err
    assert "all 1 artifacts are up to date" in result.err
    (project / ARTIFACT / "variables/variables.index").write_bytes(b"changed")
    assert_refused(cli("build", "--check"), "resnet18/saved-model altered")


def test_only_a_savedmodel_layout_may_be_replaced(workdir):
    from timmx.backends import get_backend

    backend = get_backend("saved-model")
    folder = workdir / "m_saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    for name in ("saved_model.pb", "fingerprint.pb", "variables/variables.index"):
        (folder / name).write_bytes(b"x")
    assert backend.owns_existing(folder)
    (folder / "variables/loader.py").write_text("")  # not TensorFlow's
    assert not backend.owns_existing(folder)
    (folder / "variables/loader.py").unlink()
    (folder / "README.md").write_text("")
    assert not backend.owns_existing(folder)
    (folder / "README.md").unlink()
    (folder / "saved_model.pb").unlink()
    assert not backend.owns_existing(folder)
