"""Core AI in its own image: converted and verified in the container (the runtime coreai-core
ships, the asset lowered to ODIX on the CPU), the asset then read back and run here."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import assert_matches, reference_model, require
from tests.isolated.helpers import build_image
from tests.report_files import assert_report_lists_the_files

pytestmark = pytest.mark.isolated

SIZE = ("--input-size", "3", "32", "48")  # non-square
TIMES = "\N{MULTIPLICATION SIGN}"


@pytest.fixture(scope="module")
def coreai_image(docker_client) -> float:
    return build_image("coreai")


def _run_asset(path: Path, x: np.ndarray) -> np.ndarray:
    from coreai.authoring import AIModelAsset
    from coreai.runtime import NDArray

    async def go() -> np.ndarray:
        async with AIModelAsset.load(path).executable() as model:
            outputs = await model.load_function("main")({"input": NDArray(x)})
            return np.array(outputs["output"].numpy())

    return asyncio.run(go())


def test_isolated_dynamic_batch_read_back_here(
    cli, workdir, make_checkpoint, coreai_image, no_leftovers
):
    ckpt = make_checkpoint("resnet18", num_classes=10)
    result = cli(
        "export", "coreai", "resnet18", "-c", ckpt, "--num-classes", 10, *SIZE,
        "--dynamic-batch", "-b", 2, "-o", "iso/m.aimodel", "--isolated",
    )  # fmt: skip
    assert result.code == 0, result.err

    artifact = workdir / "iso" / "m.aimodel"
    report = result.report(artifact)
    environment = report["environment"]
    assert environment["runner"] == "docker"
    assert environment["image"].split("/")[-1].startswith("timmx-coreai:")
    assert environment["packages"]["coreai-torch"] == "0.4.3"
    assert environment["packages"]["torch"].startswith("2.14.")  # the shared torch
    verification = report["verification"]
    assert verification["status"] == "passed"
    assert verification["runtime"] == "coreai.runtime"
    assert [c["batch_size"] for c in verification["checks"]] == [2, 1]
    assert "not checked" in verification["note"]
    details = verification["details"]
    assert details["inputs"] == [{"name": "input", "dtype": "Float32", "shape": [None, 3, 32, 48]}]
    assert details["outputs"] == [{"name": "output", "dtype": "Float32", "shape": [None, 10]}]
    assert any("validated with torch up to 2.13.0" in w for w in report["warnings"])
    assert sorted(p.name for p in (workdir / "iso").iterdir()) == ["m.aimodel", "m.aimodel.json"]
    for path in [artifact, *artifact.rglob("*")]:  # the folder and everything in it
        assert path.stat().st_uid == os.getuid(), path
    assert_report_lists_the_files(artifact)

    # Read back and run here, apart from timmx: the asset's signature, a batch of 3 against timm.
    require("coreai.authoring")
    from coreai.authoring import AIModelAsset

    summary = AIModelAsset.load(artifact).summary(include_statistics=False)
    assert list(summary.function_names) == ["main"]
    assert summary.function_inputs("main") == [
        ("input", f"NDArray (Float32, ? {TIMES} 3 {TIMES} 32 {TIMES} 48)")
    ]
    assert summary.function_outputs("main") == [("output", f"NDArray (Float32, ? {TIMES} 10)")]
    x = torch.randn(3, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference_model("resnet18", ckpt, num_classes=10)(x).numpy()
    actual = _run_asset(artifact, x.numpy())
    assert actual.shape == (3, 10)
    assert_matches(actual, expected)


def test_isolated_refusal_is_one_line(cli, workdir, coreai_image, no_leftovers):
    result = cli("export", "coreai", "resnet18", *SIZE, "--dynamic-batch", "--isolated")
    assert result.code == 2
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--batch-size 2" in errors[0], result.err
    assert sorted(p.name for p in workdir.iterdir()) == []
