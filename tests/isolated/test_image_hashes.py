"""Every layer of a toolchain image installs by hash (issue 22): read back from the built images'
own history, the commands the engine ran. From PyPI the torch layer too; from the PyTorch CPU
index or a wheel folder it installs by version (those wheels' hashes are not PyPI's)."""

from __future__ import annotations

import pytest

from tests.isolated.in_image import image_of

pytestmark = pytest.mark.isolated


@pytest.mark.parametrize("toolchain", ["onnx", "executorch"])  # the shared torch layer, and its own
def test_every_pip_install_requires_hashes(docker_client, toolchain):
    from timmx.images.identity import BuildSettings

    history = docker_client.api.history(image_of(toolchain))
    runs = [step["CreatedBy"] for step in history if "pip install" in step["CreatedBy"]]
    torch_layer = [run for run in runs if "torch.lock" in run]
    assert len(torch_layer) == 1, runs
    from_pypi = BuildSettings.resolve().torch_from_pypi
    assert ("TORCH_HASHES=1" in torch_layer[0]) is from_pypi, torch_layer[0]
    # the layers above torch: timm's and the toolchain's by hash; timmx's own wheel, built here
    above = [run for run in runs if run not in torch_layer and "timmx-dist" not in run]
    assert len(above) == 2 and all("--require-hashes" in run for run in above), above
