"""TF.js in its own image: exported with --isolated, then the graph model run by us in Node.js
with TF.js (the image's node and packages, apart from timmx's runner) and compared with a fresh
timm model here; --quantize float16 halves the shards. A ViT: its layer norms once became an op
TF.js lacks (_MklLayerNorm) in the converter's oneDNN graph optimisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import build_image
from tests.isolated.in_image import run_in_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated("tfjs")  # built last: see tests/prebuild.py

# Our own loader: an IOHandler that reads model.json and its shards (timmx's run.js uses
# tf.io.fromMemory), on the pure JS CPU backend; prints the outputs as JSON.
CHECK_JS = r"""
const fs = require("fs"), path = require("path");
console.warn = () => {};
const tf = require("@tensorflow/tfjs-core");
require("@tensorflow/tfjs-backend-cpu");
const { loadGraphModel } = require("@tensorflow/tfjs-converter");
const [folder, ...inputs] = process.argv.slice(2);
const handler = {
  load: async () => {
    const model = JSON.parse(fs.readFileSync(path.join(folder, "model.json")));
    const group = model.weightsManifest;
    const shards = group.flatMap((g) => g.paths.map((p) => fs.readFileSync(path.join(folder, p))));
    const data = Uint8Array.from(Buffer.concat(shards)).buffer;
    return { modelTopology: model.modelTopology, weightSpecs: group.flatMap((g) => g.weights),
             weightData: data, format: model.format, signature: model.signature };
  },
};
(async () => {
  await tf.setBackend("cpu");
  const model = await loadGraphModel(handler);
  const outputs = [];
  for (const spec of inputs) {
    const [file, ...dims] = spec.split(":");
    const bytes = fs.readFileSync(file);
    const x = tf.tensor(new Float32Array(Uint8Array.from(bytes).buffer), dims.map(Number));
    outputs.push(Array.from(await model.execute(x).data()));
  }
  console.log(JSON.stringify({ backend: tf.getBackend(), outputs }));
})();
"""

RUN_NODE = """
import json, subprocess, sys
open("/tmp/check.js", "w").write({js!r})
run = subprocess.run(["node", "/tmp/check.js", "/check/{name}", *{inputs!r}],
                     capture_output=True, text=True)
if run.returncode:
    sys.exit(run.stderr[-3000:])
print(run.stdout.strip().splitlines()[-1])
"""


def run_tfjs(artifact: Path, x: np.ndarray, nhwc: bool = False) -> np.ndarray:
    """The graph model in Node.js with TF.js, in the tfjs image, on each sample of `x` (N, C, H,
    W) one by one: (N, classes)."""
    specs = []
    for i, sample in enumerate(np.asarray(x, dtype="<f4")):
        sample = sample[None].transpose(0, 2, 3, 1) if nhwc else sample[None]
        (artifact.parent / f"x{i}.bin").write_bytes(np.ascontiguousarray(sample).tobytes())
        specs.append(":".join([f"/check/x{i}.bin", *map(str, sample.shape)]))
    script = RUN_NODE.format(js=CHECK_JS, name=artifact.name, inputs=specs)
    answer = run_in_image("tfjs", script, artifact.parent)
    assert answer["backend"] == "cpu"
    return np.asarray(answer["outputs"], dtype=np.float32)


@pytest.fixture(scope="module")
def tfjs_image(docker_client) -> float:
    return build_image("tfjs")


def test_tfjs_in_node_matches_timm(cli, workdir, make_checkpoint, tfjs_image, no_leftovers):
    size = (32, 48)  # non-square: a swap of height and width cannot pass
    ckpt = make_checkpoint("test_vit", num_classes=10, img_size=size)
    sizes = {}
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(6))
    model = reference_model("test_vit", ckpt, num_classes=10, img_size=size)
    expected = model(x).detach().numpy()
    for quantize in ("none", "float16"):
        result = cli(
            "export", "tfjs", "test_vit", "-c", ckpt, "--num-classes", 10, "--model-kwarg",
            "img_size=[32, 48]", "--input-size", 3, *size, "--quantize", quantize,
            "-o", f"out/{quantize}_web_model", "--isolated",
        )  # fmt: skip
        assert result.code == 0, result.err
        artifact = workdir / f"out/{quantize}_web_model"
        report = result.report(artifact)
        assert report["environment"]["runner"] == "docker"
        assert report["environment"]["image"].split("/")[-1].startswith("timmx-tfjs:")
        assert report["environment"]["packages"]["tensorflowjs"] == "4.22.0"
        assert report["verification"]["status"] == "passed"
        details = report["verification"]["details"]
        assert details["runtime"]["tfjs"] == "4.22.0" and details["runtime"]["backend"] == "cpu"
        assert details["weights_stored_as"][0] == ("float32" if quantize == "none" else quantize)
        assert_report_lists_the_files(artifact)
        sizes[quantize] = sum(p.stat().st_size for p in artifact.glob("*.bin"))
        assert sizes[quantize] == details["weight_bytes"]

        actual = run_tfjs(artifact, x.numpy())
        assert_matches(actual, expected, rel=1e-4 if quantize == "none" else 2e-2)
    assert 0.45 * sizes["none"] < sizes["float16"] < 0.55 * sizes["none"]


def test_depthwise_convolutions_run_in_node(
    cli, workdir, make_checkpoint, tfjs_image, no_leftovers
):
    """ConvNeXt's depthwise convolutions: TF.js's conv2d takes no groups, so onnx2tf writes them
    as convolutions TF.js runs (they once failed in Node: 'depth of input (40) must match')."""
    ckpt = make_checkpoint("convnext_atto", num_classes=10)
    result = cli(
        "export", "tfjs", "convnext_atto", "-c", ckpt, "--num-classes", 10,
        "--input-size", 3, 32, 32, "-o", "c_web_model", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    expected = reference_model("convnext_atto", ckpt, num_classes=10)(x).detach().numpy()
    assert_matches(run_tfjs(workdir / "c_web_model", x.numpy()), expected)
