"""Toolchain variants for real (issue 22): a team's pinned runtime, locked with hashes by uv, built
as a thin layer on the shared torch layer, exported and verified in, beside the built-in one in
the same build; then the artifact run in that image by the test itself, and the version checked
there."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builds import build_file, write_project
from tests.conftest import assert_matches, reference_model

pytestmark = pytest.mark.isolated

ORT = "1.22.1"  # the variant's onnxruntime; the built-in onnx toolchain's is newer
BUILD = f"""
[toolchains.ort-prod]
from = "onnx"
pins = {{ onnxruntime = "{ORT}" }}
""" + build_file(
    models=("resnet18",),
    targets="""
[[targets]]
backend = "onnx"
isolated = true

[[targets]]
backend = "onnx"
name = "onnx-prod"
toolchain = "ort-prod"
""",
)

RUN_ONNX = """
import json
import numpy as np, onnxruntime as ort
session = ort.InferenceSession("/check/{name}", providers=["CPUExecutionProvider"])
x = np.load("/check/x.npy")
out = session.run(None, {{session.get_inputs()[0].name: x}})[0]
print(json.dumps({{"version": ort.__version__, "out": out.tolist()}}))
"""


@pytest.fixture(autouse=True)
def _no_variants_left():
    from timmx.toolchains import forget_variants

    yield
    forget_variants()


def run_in(image_id: str, script: str, folder: Path, monkeypatch) -> dict:
    """A script in exactly that image, as tests/isolated/in_image.py runs one in a toolchain's."""
    from tests.isolated import in_image

    monkeypatch.setattr(in_image, "image_of", lambda _: image_id)
    return in_image.run_in_image("", script, folder)


def test_onnx_in_the_pinned_onnxruntime_beside_the_builtin(
    cli, workdir, make_checkpoint, docker_client, images, no_leftovers, monkeypatch
):
    from timmx.images.lock import read_pins
    from timmx.images.recipes import get_recipe
    from timmx.toolchains import lock_sha256

    write_project(workdir, make_checkpoint, BUILD)

    # before its lock exists, the variant is refused before anything runs
    refused = cli("build")
    assert refused.code == 2 and "timmx images lock ort-prod" in refused.err, refused.err

    locked = cli("images", "lock", "ort-prod")
    assert locked.code == 0, locked.err
    lock = workdir / "timmx-locks/ort-prod.lock"
    pins = {p.name: p for p in read_pins(lock)}
    assert pins["onnxruntime"].version == ORT and all(p.hashes for p in pins.values())

    started = time.monotonic()
    built = cli("images", "build", "ort-prod")
    assert built.code == 0, built.err
    print(f"ort-prod image: {time.monotonic() - started:.0f} s; {built.err.strip()}")
    listed = json.loads(cli("images", "list", "--json").out)
    rows = [r for r in listed if r["name"] == "ort-prod"]
    assert rows and all(r["from"] == "onnx" for r in rows)
    # present; stale instead only when timmx's source changed since (as under concurrent edits)
    assert {r["status"] for r in rows} & {"present", "stale"}

    result = cli("build")
    assert result.code == 0, result.err
    jobs = json.loads((workdir / "dist/timmx-build.json").read_text())["jobs"]
    prod, builtin = jobs["resnet18/onnx-prod"], jobs["resnet18/onnx"]
    assert prod["verification"] == builtin["verification"] == "passed"
    assert prod["toolchain"] == "ort-prod" and builtin["toolchain"] == "onnx"
    assert prod["image"].startswith("timmx-ort-prod:") and prod["image_id"]
    assert prod["image_id"] != builtin["image_id"]
    assert prod["lock_sha256"] == lock_sha256(get_recipe("ort-prod").lock_files)
    assert prod["lock_sha256"] != builtin["lock_sha256"]

    # the reports say which onnxruntime exported and verified each artifact
    folder = {name: workdir / f"dist/resnet18/{name}" for name in ("onnx", "onnx-prod")}
    report = {n: json.loads((f / "resnet18.onnx.json").read_text()) for n, f in folder.items()}
    assert report["onnx-prod"]["environment"]["packages"]["onnxruntime"] == ORT
    assert report["onnx"]["environment"]["packages"]["onnxruntime"] != ORT

    # the test's own check, in the variant's image: its onnxruntime runs the artifact
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(folder["onnx-prod"] / "x.npy", x.numpy())
    script = RUN_ONNX.format(name="resnet18.onnx")
    ran = run_in(prod["image_id"], script, folder["onnx-prod"], monkeypatch)
    assert ran["version"] == ORT
    expected = reference_model("resnet18", workdir / "ckpt/resnet18.pth", num_classes=10)(x)
    assert_matches(np.asarray(ran["out"]), expected.detach().numpy())
    (folder["onnx-prod"] / "x.npy").unlink()

    assert cli("build", "--check").code == 0
    # On a Ray cluster (one node, on this machine) the job brings the variant's locks: the node
    # exports and verifies in the same image.
    from tests.test_build_ray import cluster

    (folder["onnx-prod"] / "resnet18.onnx").unlink()
    with cluster(monkeypatch, head_cpus=1, workers=0) as (nodes, _):
        on_ray = cli("build", "--ray", nodes.address)
    assert on_ray.code == 0, on_ray.err
    assert on_ray.out.count("cached") == 1, on_ray.out  # the built-in onnx job's
    rerun = json.loads((workdir / "dist/timmx-build.json").read_text())["jobs"]
    assert rerun["resnet18/onnx-prod"]["image_id"] == prod["image_id"]
    assert rerun["resnet18/onnx-prod"]["verification"] == "passed"
    report = json.loads((folder["onnx-prod"] / "resnet18.onnx.json").read_text())
    assert report["environment"]["packages"]["onnxruntime"] == ORT

    # --locked runs a variant's job again in exactly the image the manifest recorded
    (folder["onnx-prod"] / "resnet18.onnx").unlink()
    again = cli("build", "--locked")
    assert again.code == 0, again.err
    rerun = json.loads((workdir / "dist/timmx-build.json").read_text())["jobs"]
    assert rerun["resnet18/onnx-prod"]["image_id"] == prod["image_id"]
    assert rerun["resnet18/onnx-prod"]["verification"] == "passed"
    # a changed lock makes the variant's job stale, and only it
    lock.write_text(lock.read_text() + "# re-locked\n")
    assert cli("build", "--check").code != 0
    from timmx.build.run import load_build

    states = {job.planned.id: job.status for job in load_build(workdir / "timmx.toml").jobs}
    assert states == {"resnet18/onnx": "fresh", "resnet18/onnx-prod": "stale"}


# An older LiteRT runtime: ai-edge-litert 2.2 comes with litert-torch 0.9.4, which needs a torch
# below 2.14, so this variant pins torch 2.13.0 too: executorch's pair, whose torch layer it
# shares (its lock files are executorch's, byte for byte), so the image adds one layer.
LITERT = "2.2.0"
LITERT_BUILD = f"""
[toolchains.litert-2-2]
from = "litert"
pins = {{ ai-edge-litert = "{LITERT}", torch = "2.13.0" }}
""" + build_file(
    models=("resnet18",),
    targets="""
[[targets]]
backend = "litert"
name = "litert-2-2"
toolchain = "litert-2-2"
""",
)

RUN_TFLITE = """
import json
from importlib.metadata import version
import numpy as np
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path="/check/{name}")
interpreter.allocate_tensors()
(source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
interpreter.set_tensor(source["index"], np.load("/check/x.npy").astype(source["dtype"]))
interpreter.invoke()
out = interpreter.get_tensor(target["index"])
print(json.dumps({{"version": version("ai-edge-litert"), "torch": version("torch"),
                  "out": out.tolist()}}))
"""


def test_litert_in_an_older_runtime_on_executorchs_torch_layer(
    cli, workdir, make_checkpoint, docker_client, no_leftovers, monkeypatch
):
    from timmx.images.lock import read_pins

    write_project(workdir, make_checkpoint, LITERT_BUILD)

    locked = cli("images", "lock", "litert-2-2")
    assert locked.code == 0, locked.err
    pins = {p.name: p.version for p in read_pins(workdir / "timmx-locks/litert-2-2.lock")}
    torch_pins = {
        p.name: p.version for p in read_pins(workdir / "timmx-locks/litert-2-2.torch.lock")
    }
    assert pins["ai-edge-litert"] == LITERT and torch_pins["torch"] == "2.13.0"
    assert "torch" not in pins and "timm" not in pins

    started = time.monotonic()
    built = cli("images", "build", "litert-2-2")
    assert built.code == 0, built.err
    print(f"litert-2-2 image: {time.monotonic() - started:.0f} s; {built.err.strip()}")

    result = cli("build")
    assert result.code == 0, result.err
    job = json.loads((workdir / "dist/timmx-build.json").read_text())["jobs"]["resnet18/litert-2-2"]
    assert job["verification"] == "passed" and job["toolchain"] == "litert-2-2"
    folder = workdir / "dist/resnet18/litert-2-2"
    report = json.loads((folder / "resnet18.tflite.json").read_text())
    assert report["environment"]["packages"]["ai-edge-litert"] == LITERT
    assert report["environment"]["packages"]["torch"].startswith("2.13.0")

    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    np.save(folder / "x.npy", x.numpy())
    ran = run_in(job["image_id"], RUN_TFLITE.format(name="resnet18.tflite"), folder, monkeypatch)
    (folder / "x.npy").unlink()
    assert ran["version"] == LITERT and ran["torch"].startswith("2.13.0")
    expected = reference_model("resnet18", workdir / "ckpt/resnet18.pth", num_classes=10)(x)
    assert_matches(np.asarray(ran["out"]), expected.detach().numpy())
