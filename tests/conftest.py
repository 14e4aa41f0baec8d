"""Shared fixtures: run the CLI in-process, and make checkpoints with non-trivial weights."""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.prebuild import (  # noqa: F401 - hooks: images build while in-process tests run
    pytest_collection_modifyitems,
    pytest_runtest_setup,
    pytest_sessionfinish,
    pytest_terminal_summary,
)
from timmx.cli.app import main


def unavailable(reason: str) -> None:
    """Something a test needs is missing: skip outside CI; in CI (env CI set) fail, since CI
    installs every backend and nothing may skip there. Works at module level too."""
    if os.environ.get("CI"):
        pytest.fail(f"CI runs everything, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require(module: str, hint: str = "pip install 'timmx[all]'") -> ModuleType:
    """Import `module` (a runtime a test checks artifacts in), or see `unavailable`."""
    try:
        with warnings.catch_warnings():  # some runtimes warn on import (coreai_torch)
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        unavailable(f"{module} cannot be imported here ({exc}): {hint}")
        raise  # unreachable: unavailable() always raises


def require_backend(name: str) -> None:
    """The backend's own packages, as timmx checks them before an export."""
    from timmx.backends import get_backend

    if missing := get_backend(name).missing_packages():
        unavailable(f"the {name} backend lacks {', '.join(missing)}: pip install 'timmx[all]'")


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def report(self, artifact: Path) -> dict:
        return json.loads(artifact.with_name(artifact.name + ".json").read_text())


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_runner(capture: pytest.CaptureFixture[str]):
    """`run(*ARGS)`: `timmx ARGS...` in this process; its exit code and captured output."""

    def run(*args: str) -> CliResult:
        capture.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capture.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run `timmx ARGS...` in this process; returns exit code and captured output."""
    return cli_runner(capsys)


@pytest.fixture
def cli_fd(capfd: pytest.CaptureFixture[str]):
    """As `cli`, captured at the file descriptors: what native libraries print from C++ too."""
    return cli_runner(capfd)


def randomize_norms(model) -> None:
    """timm zero-initialises the last norm of residual blocks, which hides whole branches from a
    comparison; give every norm (and layer-scale) random, well-conditioned parameters."""
    import torch

    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for module in model.modules():
            for name in ("weight", "bias", "running_mean", "running_var", "gamma"):
                tensor = getattr(module, name, None)
                is_norm = "Norm" in type(module).__name__ or name == "gamma"
                if not is_norm or not isinstance(tensor, torch.Tensor) or tensor.ndim != 1:
                    continue
                values = torch.rand(tensor.shape, generator=generator)
                if name in ("weight", "running_var", "gamma"):
                    tensor.copy_(0.5 + values)  # positive, around 1
                else:
                    tensor.copy_(values - 0.5)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Factory: save a state dict of MODEL (random weights, randomised norms); cached per args."""
    import timm
    import torch

    cache: dict[tuple, Path] = {}
    folder = tmp_path_factory.mktemp("checkpoints")

    def make(name: str, wrap: str | None = None, **kwargs) -> Path:
        key = (name, wrap, tuple(sorted(kwargs.items())))
        if key not in cache:
            torch.manual_seed(7)
            model = timm.create_model(name, pretrained=False, **kwargs)
            randomize_norms(model)
            state = model.state_dict()
            if wrap == "module":
                state = {f"module.{k}": v for k, v in state.items()}
            elif wrap:
                state = {wrap: state, "epoch": 3}
            path = folder / f"{name}-{len(cache)}.pth"
            torch.save(state, path)
            cache[key] = path
        return cache[key]

    return make


def reference_model(name: str, checkpoint: Path, **kwargs):
    """The PyTorch model the artifact must match, built independently of timmx."""
    import timm
    import torch

    model = timm.create_model(name, pretrained=False, **kwargs)
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    return model.eval()


def assert_matches(actual, expected, rel: float = 1e-4) -> None:
    """Max abs error within `rel` of the output's scale (logits of random models can be large)."""
    import numpy as np

    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.abs(expected).max()), 1.0)
    error = float(np.abs(actual - expected).max())
    assert error <= rel * scale, f"max abs error {error:.3g} over {rel:g} x scale {scale:.3g}"
