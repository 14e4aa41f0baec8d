"""The build files the `timmx build` tests share, and `write_project`, which lays one out with
its checkpoints."""

from __future__ import annotations

from pathlib import Path

# Each model the build tests use, and its checkpoint's file under ckpt/.
CHECKPOINTS = {"resnet18": "resnet18.pth", "mobilenetv3_small_100": "mnv3.pth"}
ONNX = '[[targets]]\nbackend = "onnx"\n'
ONNX_AND_TORCH_EXPORT = (
    '[[targets]]\nbackend = "onnx"\ndynamic-batch = true\n\n[[targets]]\nbackend = "torch-export"\n'
)


def build_file(
    size: int = 32,
    models: tuple[str, ...] = tuple(CHECKPOINTS),
    sizes: dict[str, tuple[int, int]] | None = None,
    targets: str = ONNX_AND_TORCH_EXPORT,
) -> str:
    """A build file with output dist/, a square default input, `models` (10 classes each, an
    input size of their own from `sizes`) and `targets`."""
    parts = ['\n[build]\noutput = "dist"\n', f"[defaults]\ninput-size = [3, {size}, {size}]\n"]
    for model in models:
        entry = f'[[models]]\nname = "{model}"\ncheckpoint = "ckpt/{CHECKPOINTS[model]}"\n'
        entry += "num-classes = 10\n"
        if sizes and model in sizes:
            entry += f"input-size = [3, {sizes[model][0]}, {sizes[model][1]}]\n"
        parts.append(entry)
    parts.append(targets)
    return "\n".join(parts)


def write_project(root: Path, make_checkpoint, text: str) -> Path:
    """`text` as root/timmx.toml, with the checkpoints (10 classes) of the models it names."""
    (root / "ckpt").mkdir(exist_ok=True)
    for model, file in CHECKPOINTS.items():
        if f'name = "{model}"' in text:
            checkpoint = make_checkpoint(model, num_classes=10)
            (root / "ckpt" / file).write_bytes(checkpoint.read_bytes())
    (root / "timmx.toml").write_text(text)
    return root


def run_build(root: Path, *args: str) -> Path:
    """`timmx build` of root/timmx.toml in this process (for module-scoped fixtures, where the
    `cli` fixture is not at hand); it must succeed."""
    from timmx.cli.app import main

    try:
        main(["build", str(root / "timmx.toml"), *args])
    except SystemExit as exc:
        assert not exc.code, exc.code
    return root


def copy_project(built: Path, workdir: Path) -> Path:
    """A test's own copy of a project built once per module."""
    import shutil

    shutil.copytree(built, workdir, dirs_exist_ok=True)
    return workdir


def check_two_target_build(root: Path, sizes: dict[str, tuple[int, int]]) -> dict:
    """After a build of `build_file()`'s two targets: each model's onnx artifact (at batch 3,
    which its dynamic-batch export never saw) and torch-export artifact match timm, each job is
    verified, no staging is left; returns the manifest's jobs."""
    import json

    import torch

    from tests.conftest import assert_matches, reference_model
    from tests.test_export_onnx import run_onnx

    dist = root / "dist"
    for model, (h, w) in sizes.items():
        checkpoint = root / "ckpt" / CHECKPOINTS[model]
        x = torch.randn(3, 3, h, w, generator=torch.Generator().manual_seed(11))
        expected = reference_model(model, checkpoint, num_classes=10)(x).detach().numpy()
        assert_matches(run_onnx(dist / model / "onnx" / f"{model}.onnx", x.numpy()), expected)
        program = torch.export.load(dist / model / "torch-export" / f"{model}.pt2").module()
        assert_matches(program(x[:1]).detach().numpy(), expected[:1])
        report = json.loads((dist / model / "onnx" / f"{model}.onnx.json").read_text())
        assert report["verification"]["status"] == "passed"
        assert report["job"]["model"]["checkpoint"] == f"ckpt/{CHECKPOINTS[model]}"
    jobs = json.loads((dist / "timmx-build.json").read_text())["jobs"]
    assert sorted(jobs) == sorted(f"{m}/{t}" for m in sizes for t in ("onnx", "torch-export"))
    assert all(entry["verification"] == "passed" for entry in jobs.values())
    staging = list(dist.rglob(".*"))
    assert not staging, staging
    return jobs
