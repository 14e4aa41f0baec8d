"""Calibration inputs for static quantization, shared by the backends that quantize.

`calibration_batches(...)` turns an `ExportJob.calibration` into NCHW float32 batches of the
export's batch size: from a torch-saved (N, C, H, W) tensor, from a folder of images
preprocessed with the model's timm data config, or (an explicit opt-in, with a warning) from
random inputs drawn like the verification inputs. Everything is validated before any
conversion starts; a bad input is one `InvalidInputError` line that names the shape the model
expects.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from timmx.errors import InvalidInputError, first_line

if TYPE_CHECKING:
    import torch

    from timmx.contract import CalibrationSpec

# Without --calibration-samples or --calibration-steps, at most this many samples are used.
DEFAULT_MAX_SAMPLES = 512
# --random-calibration without a count: this many batches.
DEFAULT_RANDOM_STEPS = 16
# Samples kept out of calibration to verify the quantized artifact on: at most this many, and
# (for random calibration) at least this many fresh draws.
HELD_OUT_MAX = 64
HELD_OUT_MIN = 16
# Calibration samples are held as float32 up to this size, checked before they are made: a tensor
# saved as a strided or expanded view is a few bytes on disk and may claim terabytes.
MAX_CALIBRATION_BYTES = 8 * 1024**3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
_RANDOM_SEED = 20_240_917  # not a verification seed: calibration and verification differ

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """What the calibration data must look like: the model's input, one sample."""

    size: tuple[int, int, int]  # C, H, W
    batch_size: int
    pixels: bool  # True: normalisation is baked in, the model takes [0, 1] pixels

    def expected(self) -> str:
        c, h, w = self.size
        what = "of pixels in [0, 1]" if self.pixels else "normalised like the model's input"
        return f"an (N, {c}, {h}, {w}) float32 tensor {what}"


@dataclass(frozen=True)
class Calibration:
    """Batches to calibrate on, and samples calibration did not see, to verify on."""

    batches: list[torch.Tensor]
    held_out: torch.Tensor  # (M, C, H, W), M a whole number of batches
    held_out_label: str  # how the report names them


def calibration_batches(
    spec: CalibrationSpec | None,
    workspace: Path,
    target: Target,
    data_config: dict[str, Any],
    warn: Warn,
) -> Calibration:
    """The calibration batches `spec` asks for, validated (NCHW float32 on the CPU), and the
    samples held out of them for verification.

    `data_config` is timm's resolved data config of the model: an image folder is preprocessed
    with it. Paths in `spec` are relative to `workspace`."""
    if spec is None:
        raise InvalidInputError(
            "calibration data is needed: pass --calibration-data PATH (a tensor or an image "
            "folder), or --random-calibration to try it on noise"
        )
    limit = sample_limit(spec, target.batch_size)
    if spec.random:
        warn(
            "calibrated on random inputs (--random-calibration): the int8 ranges fit noise, "
            "not your data; not for production, pass --calibration-data"
        )
        count = limit or DEFAULT_RANDOM_STEPS * target.batch_size
        check_room(count, target.size, "--random-calibration")
        data = random_samples(target, count)
        count = max(HELD_OUT_MIN // target.batch_size, 1) * target.batch_size
        held = random_samples(target, count, seed=_RANDOM_SEED + 1)
        label = f"fresh random draws like the calibration's ({count})"
        return Calibration(to_batches(data, spec, target, warn), held, label)
    assert spec.path is not None
    room = None if limit is None else limit + HELD_OUT_MAX  # samples past the limit verify
    data = load_samples(spec.path, workspace, data_config, target, room, warn)
    data, held, label = hold_out(data, target.batch_size, limit)
    return Calibration(to_batches(data, spec, target, warn), held, label)


def hold_out(
    data: torch.Tensor, batch: int, limit: int | None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Split samples into calibration and verification: the samples past `limit` when there
    are any, else the last fifth (whole batches, at most HELD_OUT_MAX); with fewer than two
    batches, none can be spared and verification runs on the calibration samples themselves."""
    n = len(data)
    if limit is not None and n >= limit + batch:
        calibration, extra = data[:limit], data[limit:]
    elif n >= 2 * batch:
        count = max(batch, min(HELD_OUT_MAX, n // 5) // batch * batch)
        calibration, extra = data[: n - count], data[n - count :]
    else:
        seen = data[: n // batch * batch]
        return data, seen, f"the calibration samples themselves ({len(seen)}, too few to hold out)"
    held = extra[: min(HELD_OUT_MAX, len(extra)) // batch * batch]
    return calibration, held, f"held-out calibration samples ({len(held)})"


def sample_limit(spec: CalibrationSpec, batch_size: int) -> int | None:
    """How many samples the flags ask for at most; None: all there are."""
    limits = [spec.samples] if spec.samples else []
    if spec.steps:
        limits.append(spec.steps * batch_size)
    return min(limits) if limits else None


def random_samples(target: Target, count: int, seed: int = _RANDOM_SEED) -> torch.Tensor:
    """Drawn like the verification inputs: pixels in [0, 1], or N(0, 1) when not normalised."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (count, *target.size)
    draw = torch.rand if target.pixels else torch.randn
    return draw(shape, generator=generator)


def load_samples(
    path: str,
    workspace: Path,
    data_config: dict[str, Any],
    target: Target,
    limit: int | None,
    warn: Warn,
) -> torch.Tensor:
    """A tensor file or an image folder as one validated (N, C, H, W) float32 tensor."""
    full = workspace / path
    if not full.exists():
        raise InvalidInputError(
            f"calibration data not found: {path} (expected {target.expected()}, saved with "
            "torch.save, or an image folder)"
        )
    cap = limit or DEFAULT_MAX_SAMPLES
    if full.is_dir():
        data = load_image_folder(full, path, data_config, target, cap, warn)
        check_values(data, path, target, warn)
        return data
    data, total = load_tensor(full, path, target, warn, cap)
    if limit is None and total > cap:
        warn(
            f"calibrating on the first {cap} of the {total} samples in {path}: "
            "set --calibration-samples to use more"
        )
    return data


def load_tensor(
    full: Path, path: str, target: Target, warn: Warn, cap: int
) -> tuple[torch.Tensor, int]:
    """The first `cap` samples of a tensor file, checked, as float32 at the export's size; and
    how many samples the file holds."""
    import torch

    expected = target.expected()
    if full.stat().st_size == 0:
        raise InvalidInputError(f"calibration data {path} is empty: expected {expected}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # weights_only: a pickle that carries code is refused before anything runs.
            obj = torch.load(full, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):
            raise InvalidInputError(
                f"calibration data {path} was refused: it would import code when loaded; "
                f"save {expected} with torch.save"
            ) from None
        raise InvalidInputError(
            f"calibration data {path} cannot be read (not a torch-saved file): expected "
            f"{expected}, saved with torch.save, or an image folder"
        ) from None
    except Exception as exc:  # torch.load raises many types for damaged or foreign files
        raise InvalidInputError(
            f"calibration data {path} cannot be read ({first_line(exc, 100)}): expected "
            f"{expected}, saved with torch.save, or an image folder"
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise InvalidInputError(
            f"calibration data {path} holds a {type(obj).__name__}, not a tensor: save "
            f"{expected} with torch.save"
        )
    check_shape(obj, path, target, any_size=True)
    if not obj.is_floating_point():
        raise InvalidInputError(
            f"calibration data {path} has dtype {obj.dtype}: expected {expected} (raw 8-bit "
            "images go in an image folder)"
        )
    # A tensor stored whole was paid for by loading it: all of it is checked, so a damaged file
    # is refused as a whole. A view larger than its storage is checked only where it is used.
    stored_whole = obj.numel() * obj.element_size() <= obj.untyped_storage().nbytes()
    if stored_whole:
        check_values(obj, path, target, warn)
    used = obj[:cap]  # a view: nothing is copied before the size is known to fit
    check_room(len(used), tuple(used.shape[1:]), f"calibration data {path}")
    check_room(len(used), target.size, f"calibration data {path}")  # resized to the export's size
    data = used.detach().to(torch.float32).contiguous()
    if not stored_whole:
        check_values(data, path, target, warn)
    return resized(data, path, target, warn), len(obj)


def check_room(count: int, sample: tuple[int, ...], what: str) -> None:
    """Refuse `count` samples of shape `sample` that would take more than
    MAX_CALIBRATION_BYTES as float32, before any of them is made."""
    need = count * math.prod(sample) * 4
    if need > MAX_CALIBRATION_BYTES:
        shape = "x".join(str(n) for n in sample)
        raise InvalidInputError(
            f"{what}: {count} samples of {shape} take {need / 1024**3:.1f} GiB "
            f"as float32, more than the {MAX_CALIBRATION_BYTES // 1024**3} GiB timmx holds: "
            "use fewer (--calibration-samples) or smaller samples"
        )


def resized(data: torch.Tensor, path: str, target: Target, warn: Warn) -> torch.Tensor:
    """Samples of another height and width than the export's, resized to it (bilinear, with
    antialiasing), as timm's transform resizes images: one calibration set serves models
    exported at different sizes."""
    import torch.nn.functional as F

    _, h, w = target.size
    if list(data.shape[2:]) == [h, w]:
        return data
    warn(
        f"calibration data {path} is {data.shape[2]}x{data.shape[3]} pixels, the export "
        f"{h}x{w}: resized (bilinear); save samples at {h}x{w} to calibrate on exactly them"
    )
    return F.interpolate(data, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def check_shape(data: torch.Tensor, path: str, target: Target, any_size: bool = False) -> None:
    """Refuse a tensor that is not (N, C, H, W) with the model's channels; and, unless
    `any_size`, of another height and width than the export's."""
    c, h, w = target.size
    shape = list(data.shape)
    problem = None
    if data.ndim != 4:
        problem = f"has {data.ndim} dimensions {shape}"
    elif shape[0] == 0:
        problem = "is empty (no samples)"
    elif shape[1] != c:
        problem = f"has shape {shape}, {shape[1]} channels"
        if shape[3] == c and shape[1:3] == [h, w]:
            problem += " (it looks channels-last: save x.permute(0, 3, 1, 2))"
    elif shape[2:] != [h, w] and not any_size:
        problem = f"has shape {shape}, {shape[2]}x{shape[3]} pixels"
    if problem:
        raise InvalidInputError(
            f"calibration data {path} {problem}: expected {target.expected()} "
            f"for the input size {c} {h} {w}"
        )


def check_values(data: torch.Tensor, path: str, target: Target, warn: Warn) -> None:
    import torch

    finite = torch.isfinite(data)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise InvalidInputError(
            f"calibration data {path} contains {bad} NaN or Inf values: expected "
            f"{target.expected()}, all finite"
        )
    if target.pixels and float(data.abs().max()) > 1.5:
        warn(
            f"calibration data {path} has values up to {float(data.abs().max()):.3g} but the "
            "model takes pixels in [0, 1] (--normalize): check its scaling"
        )


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (class subfolders included), in a stable order."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def load_image_folder(
    folder: Path, path: str, data_config: dict[str, Any], target: Target, cap: int, warn: Warn
) -> torch.Tensor:
    import torch
    from PIL import Image, UnidentifiedImageError

    c = target.size[0]
    if c not in (1, 3):
        raise InvalidInputError(
            f"image folders calibrate 1- or 3-channel models, this one takes {c}: pass "
            f"{target.expected()}, saved with torch.save"
        )
    files = image_files(folder)
    if not files:
        raise InvalidInputError(
            f"calibration folder {path} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}...): "
            f"add images, or pass {target.expected()}, saved with torch.save"
        )
    if len(files) > cap:
        if cap == DEFAULT_MAX_SAMPLES:
            warn(
                f"calibrating on the first {cap} of the {len(files)} images in {path}: "
                "set --calibration-samples to use more"
            )
        files = files[:cap]
    check_room(len(files), target.size, f"calibration folder {path}")
    transform = image_transform(data_config, target)
    samples = []
    for file in files:
        name = f"{path.rstrip('/')}/{file.relative_to(folder)}"
        try:
            with Image.open(file) as image:
                image.load()
                pixels = image.convert("RGB" if c == 3 else "L")
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise InvalidInputError(
                f"calibration image {name} cannot be read ({first_line(exc, 80)}): fix or "
                f"remove it (the images become {target.expected()})"
            ) from None
        samples.append(transform(pixels))
    data = torch.stack(samples).to(torch.float32)
    check_shape(data, path, target)  # a transform that missed the size is still caught
    return data


def image_transform(data_config: dict[str, Any], target: Target):
    """timm's eval transform for the model's data config at the export's input size; no
    normalisation when it is baked into the graph (the model then takes [0, 1] pixels)."""
    from timm.data import create_transform

    from timmx.modeling import fit_channels

    config = dict(data_config)
    config["input_size"] = target.size
    chans = target.size[0]
    if target.pixels:  # timm's normalize=False keeps 0..255 integers: normalise by (0, 1)
        config["mean"], config["std"] = (0.0,) * chans, (1.0,) * chans
    else:
        config["mean"] = fit_channels(config["mean"], chans)
        config["std"] = fit_channels(config["std"], chans)
    return create_transform(**config, is_training=False)


def to_batches(data: torch.Tensor, spec: CalibrationSpec, target: Target, warn: Warn):
    """Whole batches of the export's batch size (the graph has a fixed batch), `steps` at most."""
    batch = target.batch_size
    if spec.samples and spec.samples > len(data) and not spec.random:
        warn(
            f"--calibration-samples {spec.samples} but {spec.path} holds {len(data)}: "
            f"calibrating on {len(data)}"
        )
    count = len(data) // batch
    if count == 0:
        raise InvalidInputError(
            f"calibration needs at least one batch of {batch} samples (the export's "
            f"--batch-size), got {len(data)}: add samples or lower --batch-size"
        )
    if len(data) % batch:
        warn(f"calibration uses {count * batch} of {len(data)} samples (whole batches of {batch})")
    if spec.steps and spec.steps > count:
        warn(f"--calibration-steps {spec.steps} but the data fills {count}: calibrating on {count}")
    steps = min(count, spec.steps or count)
    return [data[i * batch : (i + 1) * batch] for i in range(steps)]
