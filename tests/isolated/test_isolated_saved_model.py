"""A TensorFlow SavedModel from its own image: exported with --isolated, then the folder loaded
by us in TensorFlow in that image (apart from timmx), its `serving_default` run at two batch
sizes, and compared with a fresh timm model here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image
from tests.isolated.in_image import run_in_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated("saved-model")  # built last: see tests/prebuild.py

RUN_SAVED_MODEL = """
import json, os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np
import tensorflow as tf

signature = tf.saved_model.load("/check/{name}").signatures["serving_default"]
outputs = {{}}
for key in ("x1", "x3"):
    x = np.load(f"/check/{{key}}.npy")
    outputs[key] = signature(input=tf.constant(x))["output"].numpy().tolist()
print(json.dumps(outputs))
"""


@pytest.fixture(scope="module")
def saved_model_image(docker_client) -> float:
    return build_image("saved-model")


def test_saved_model_in_its_image_matches_timm(
    cli, workdir, make_checkpoint, saved_model_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "saved-model", "resnet18", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 32, 48, "--dynamic-batch", "-o", "out/r.saved_model", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    artifact = workdir / "out/r.saved_model"
    report = result.report(artifact)
    assert report["environment"]["runner"] == "docker"
    assert report["environment"]["image"].split("/")[-1].startswith("timmx-saved-model:")
    assert report["environment"]["packages"]["tensorflow"] == "2.21.0"
    assert report["verification"]["status"] == "passed"
    assert_report_lists_the_files(artifact)

    model = reference_model("resnet18", ckpt, num_classes=10)
    inputs = {}
    for batch in (1, 3):  # non-square, and two batch sizes through the dynamic batch
        x = torch.randn(batch, 3, 32, 48, generator=torch.Generator().manual_seed(batch))
        inputs[f"x{batch}"] = x
        np.save(artifact.parent / f"x{batch}.npy", x.numpy())
    script = RUN_SAVED_MODEL.format(name=artifact.name)
    outputs = run_in_image("saved-model", script, artifact.parent)
    for key, x in inputs.items():
        actual = np.asarray(outputs[key], dtype=np.float32)
        assert actual.shape == (x.shape[0], 10)
        assert_matches(actual, model(x).detach().numpy())
