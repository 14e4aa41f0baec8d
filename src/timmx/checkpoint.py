"""Load a checkpoint safely and check that it fits the model before loading it."""

from __future__ import annotations

import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from timmx.errors import CheckpointError, ModelError, first_line

if TYPE_CHECKING:
    import torch

# Checkpoint wrappers written by timm's train script, Lightning-style trainers and others.
_WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .pth/.pt/.bin (pickle, weights only) or a .safetensors file."""
    import torch

    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty: re-save or re-download it")
    if path.suffix == ".safetensors":
        obj = _load_safetensors(path)
    else:
        try:
            # weights_only: a pickle that carries code is refused before anything is executed.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # protocol notes; the errors are what count
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            unsafe = [g for g in _pickle_globals(path) or [] if not g.startswith(_SAFE_GLOBALS)]
            if unsafe:
                raise CheckpointError(
                    f"checkpoint {path} was refused: it would import {unsafe[0]} when loaded, "
                    "which can run code. Re-save it as a plain state_dict "
                    "(torch.save(model.state_dict(), ...)) or as .safetensors"
                ) from None
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint: pass a .pth/.pt/.safetensors state dict"
            ) from None
        except Exception as exc:  # torch.load raises many types for damaged files
            if _looks_truncated(exc):
                raise CheckpointError(
                    f"checkpoint {path} is truncated or corrupt ({first_line(exc, 120)}): "
                    "re-save or re-download it"
                ) from None
            raise CheckpointError(
                f"{path} is not a PyTorch checkpoint ({first_line(exc, 120)}): "
                "pass a .pth/.pt/.safetensors state dict"
            ) from None
    return _unwrap(obj, path)


# Globals a plain state dict's pickle refers to; anything else is code we will not run.
_SAFE_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "numpy.")


def _pickle_globals(path: Path) -> list[str] | None:
    """The globals a pickle would import, read without running it; None if it is no pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:
        return None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file ({first_line(exc)}): "
            "re-save or re-download it"
        ) from None


def _looks_truncated(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, EOFError | zipfile.BadZipFile) or any(
        word in text for word in ("central directory", "failed finding", "unexpected eof", "eof")
    )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {path} holds no state dict: save model.state_dict() "
            "(or a dict with a 'state_dict' or 'model' key)"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors: save model.state_dict()")
    return {_strip_prefixes(k): v for k, v in tensors.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def apply_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], model_name: str
) -> None:
    """Load `state` into `model`, or explain in one line how the two differ."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        model.load_state_dict(state, strict=True)
        return
    problems = []
    if mismatched:
        shown = "; ".join(
            f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in mismatched[:3]
        )
        problems.append(f"{len(mismatched)} shape mismatch(es) ({shown})")
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])})")
    raise ModelError(
        f"checkpoint does not fit {model_name}: {'; '.join(problems)}{_hint(model, mismatched)}"
    )


def _hint(model: torch.nn.Module, mismatched: list[tuple[str, tuple, tuple]]) -> str:
    classifier = getattr(model, "get_classifier", lambda: None)()
    classifier_keys = {
        f"{name}.weight" for name, module in model.named_modules() if module is classifier
    }
    for key, ckpt_shape, _ in mismatched:
        if key in classifier_keys and ckpt_shape:
            return f" - pass --num-classes {ckpt_shape[0]}"
    if mismatched and len(mismatched[0][1]) == 4:
        key, ckpt_shape, model_shape = mismatched[0]
        if ckpt_shape[0] == model_shape[0] and ckpt_shape[1] != model_shape[1]:
            return f" - pass --in-chans {ckpt_shape[1]}"
    return " - is it a checkpoint for another architecture?"
