"""A real, trained model for the bench tests: scikit-learn's bundled digits (1,797 labelled 8x8
images, no download) as ImageFolders at 32x32, and a tiny timm model trained on the CPU on them
with the same timm eval preprocessing the bench applies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

MODEL = "test_resnet"
SIZE = 32
CLASSES = 10
HELD_OUT = 500  # images of the held-out split: the bench's data


@dataclass(frozen=True)
class Digits:
    train: Path  # ImageFolder of the training split
    test: Path  # ImageFolder of the held-out split
    checkpoint: Path  # the trained model's state dict
    accuracy: float  # its top-1 on the held-out split, measured by the trainer


def write_digits(root: Path) -> tuple[Path, Path]:
    """The digits as two ImageFolders (class folders `0`..`9`), RGB PNGs of SIZE x SIZE."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    splits = {"test": order[:HELD_OUT], "train": order[HELD_OUT:]}
    for split, indices in splits.items():
        for i in indices:
            label = int(digits.target[i])
            pixels = (digits.images[i] * (255.0 / 16.0)).astype(np.uint8)
            image = Image.fromarray(pixels, "L").resize((SIZE, SIZE), Image.Resampling.NEAREST)
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(folder / f"{i:04d}.png")
    return root / "train", root / "test"


def load_folder(folder: Path):
    """Images and labels of an ImageFolder, preprocessed by timm's eval transform of MODEL at
    SIZE (what an export at --input-size 3 SIZE SIZE records), normalised."""
    import timm
    import torch
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(MODEL, pretrained=False, num_classes=CLASSES)
    config = resolve_data_config({}, model=model)
    config["input_size"] = (3, SIZE, SIZE)
    transform = create_transform(**config, is_training=False)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            with Image.open(file) as image:
                images.append(transform(image.convert("RGB")))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def train(root: Path, epochs: int = 8) -> Digits:
    """Train MODEL from scratch on the training split (seeded) and measure it on the other."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy machine more threads ran several times slower
    try:
        return _train(root, epochs)
    finally:
        torch.set_num_threads(threads)


def _train(root: Path, epochs: int) -> Digits:
    import timm
    import torch

    train_dir, test_dir = write_digits(root)
    x, y = load_folder(train_dir)
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * (len(x) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for i in range(len(x) // 64):
            batch = order[i * 64 : (i + 1) * 64]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    tx, ty = load_folder(test_dir)
    with torch.inference_mode():
        accuracy = float((model(tx).argmax(-1) == ty).float().mean())
    checkpoint = root / "digits.pth"
    torch.save(model.state_dict(), checkpoint)
    return Digits(train_dir, test_dir, checkpoint, accuracy)


# The artifacts the bench tests and benchmarks/bench_digits.py export from the trained model:
# fp32 and int8 of onnx, litert and openvino (channels-last int8 LiteRT; normalisation and
# softmax baked into the fp32 IR, so that neither is applied twice).
GOOD = {
    "digits.onnx": ("onnx", {}),
    "digits-int8.onnx": ("onnx", {"mode": "int8", "calibration_data": "train"}),
    "digits.tflite": ("litert", {"mode": "fp32"}),
    "digits-int8.tflite": (
        "litert",
        {"mode": "int8", "calibration_data": "train", "nhwc_input": True},
    ),
    "digits.xml": ("openvino", {"mode": "fp32", "normalize": True, "softmax": True}),
    "digits-int8.xml": ("openvino", {"mode": "int8", "calibration_data": "train"}),
}


def export_artifacts(root: Path, names: list[str], folder: str = "out") -> dict[str, Path]:
    """Export the GOOD artifacts `names` of the model trained under `root` (the workspace: the
    reports record paths relative to it) into root/folder."""
    import os

    from timmx import export

    paths = {}
    previous = Path.cwd()
    os.chdir(root)
    try:
        for name in names:
            backend, options = GOOD[name]
            extra = {"calibration_samples": 64} if "calibration_data" in options else {}
            export(
                backend,
                MODEL,
                checkpoint="digits.pth",
                num_classes=CLASSES,
                input_size=(3, SIZE, SIZE),
                output=f"{folder}/{name}",
                **options,
                **extra,
            )
            paths[name] = root / folder / name
    finally:
        os.chdir(previous)
    return paths


@pytest.fixture(scope="session", name="digits")
def digits_fixture(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """The trained model, once per session (about half a minute on one core)."""
    from tests.conftest import require

    require("sklearn", "pip install scikit-learn (the dev group)")
    return train(tmp_path_factory.mktemp("digits"))
