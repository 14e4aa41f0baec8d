"""MNN in its own image: exported with --isolated, then the .mnn run by us in MNN's runtime in that
image (apart from timmx) and compared with a fresh timm model here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image
from tests.isolated.in_image import run_in_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

RUN_MNN = """
import json
import numpy as np
import MNN.expr as F
import MNN.nn as nn

module = nn.load_module_from_file("/check/{name}", ["input"], ["output"], thread_num=1)
x = np.load("/check/x.npy")
output = module.forward([F.const(x, list(x.shape), F.NCHW)])[0]
print(json.dumps(np.array(F.convert(output, F.NCHW).read()).reshape(x.shape[0], -1).tolist()))
"""


@pytest.fixture(scope="module")
def mnn_image(docker_client) -> float:
    return build_image("mnn")


def test_mnn_in_its_image_matches_timm(cli, workdir, make_checkpoint, mnn_image, no_leftovers):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "mnn", "resnet18", "-c", ckpt, "--num-classes", 10, "--input-size", 3, 32, 48,
        "-o", "out/r.mnn", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    artifact = workdir / "out/r.mnn"
    report = result.report(artifact)
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-mnn:")
    assert report["environment"]["packages"]["mnn"] == "3.6.1"
    assert report["verification"]["status"] == "passed"
    assert_report_lists_the_files(artifact)

    x = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(6))  # non-square
    np.save(artifact.parent / "x.npy", x.numpy())
    actual = np.asarray(run_in_image("mnn", RUN_MNN.format(name=artifact.name), artifact.parent))
    expected = reference_model("resnet18", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(actual, expected)
