"""The labelled images: an ImageFolder (one sub-folder per class), a seeded subset, and the
model's own timm eval preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.calibration import IMAGE_SUFFIXES
from timmx.errors import InvalidInputError, first_line

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class LabelledImages:
    root: Path
    classes: list[str]  # folder names in class-index order
    files: list[Path]
    labels: np.ndarray  # class index of each file


def scan(root: Path, limit: int | None, seed: int, labels: list[str] | None) -> LabelledImages:
    """The image files under `root`'s class folders and their labels: class order is the sorted
    folder names, or `labels` (the artifact's own, in class order) where given. `limit`: a
    fixed subset of that many, drawn with `seed`."""
    import numpy as np

    if not root.is_dir():
        raise InvalidInputError(
            f"--data {root} is not a folder: give an image folder with one sub-folder per class"
        )
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InvalidInputError(
            f"--data {root} has no class folders: put each class's images in a sub-folder "
            "named after the class (ImageFolder layout)"
        )
    classes = [p.name for p in folders]
    if labels is not None:
        unknown = [name for name in classes if name not in labels]
        if unknown:
            raise InvalidInputError(
                f"--data {root}: class folder(s) {', '.join(unknown[:3])} are not among the "
                "artifact's labels: name the folders after its labels"
            )
        classes = list(labels)
    index = {name: i for i, name in enumerate(classes)}
    files: list[Path] = []
    targets: list[int] = []
    for folder in folders:
        found = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        files += found
        targets += [index[folder.name]] * len(found)
    if not files:
        raise InvalidInputError(f"--data {root} holds no images ({', '.join(IMAGE_SUFFIXES[:4])})")
    chosen = np.arange(len(files))
    if limit is not None and limit < len(files):
        chosen = np.sort(np.random.default_rng(seed).choice(len(files), limit, replace=False))
    return LabelledImages(
        root, classes, [files[i] for i in chosen], np.asarray(targets, dtype=np.int64)[chosen]
    )


def preprocess(
    images: LabelledImages, data_config: dict[str, Any], size: tuple[int, int, int], pixels: bool
) -> torch.Tensor:
    """(N, C, H, W) float32: timm's eval transform of the model (resize, centre crop) at the
    export's input size; normalised with the report's mean/std unless the artifact has it baked
    in (`pixels`: it takes [0, 1])."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from timmx.calibration import Target, image_transform

    c = size[0]
    if c not in (1, 3):
        raise InvalidInputError(f"the bench reads 1- or 3-channel images, this model takes {c}")
    transform = image_transform(data_config, Target(size=size, batch_size=1, pixels=pixels))
    samples = []
    for file in images.files:
        try:
            with Image.open(file) as image:
                samples.append(transform(image.convert("RGB" if c == 3 else "L")))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InvalidInputError(
                f"image {file} cannot be read ({first_line(exc, 80)}): fix or remove it"
            ) from None
    return torch.stack(samples).to(torch.float32).contiguous()
