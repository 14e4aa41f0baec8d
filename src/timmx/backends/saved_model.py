"""TensorFlow SavedModel (a folder) through onnx2tf from the ONNX backend's export, verified by
loading it in TensorFlow (`tf.saved_model.load`, its `serving_default` signature).

The intermediate .onnx is the onnx backend's fp32 export (torch.onnx, slimmed), written in the
private staging folder and removed with it. onnx2tf turns it into a Keras model: the input stays
NCHW as in timm (its `keep_ncw_or_nchw_or_ncdhw_input_names`), or becomes NHWC with
`--nhwc-input` (onnx2tf's own transposition); the batch is dynamic with --dynamic-batch. timmx
saves that model itself with one `serving_default` signature ("input" to "output"), so none of
onnx2tf's other files (.tflite, .json...) are written. onnx2tf folds the weights into constants:
they live in saved_model.pb, under protobuf's 2 GB limit.

onnx2tf runs in a child process: it prints a great deal (from Python and from TensorFlow's C++),
seeds the global random generators on import, and would fetch sample images from GitHub for its
own checks of an NHWC input (replaced here by local noise). onnx2tf 1.28.8 is the newest release
for Python 3.11 (2.x needs Python 3.12); it declares no dependencies, so `requires` lists what
it imports. TensorFlow shares a process with torch, but only when triton (torch's CUDA wheels)
is loaded first: see timmx.backends._load_order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import Field

from timmx.backends import get_backend, register
from timmx.backends._load_order import load_triton_before_tensorflow
from timmx.backends.base import Backend, BackendOptions, ExportContext, Runtime
from timmx.backends.mnn import native_output
from timmx.errors import ExportFailedError

SIGNATURE = "serving_default"
# What a SavedModel folder holds (tf.saved_model.save): the graph, the weights, its assets and
# the fingerprint (TensorFlow >= 2.12).
_LAYOUT = {"saved_model.pb", "variables", "assets", "fingerprint.pb"}
# The backends to suggest when onnx2tf cannot take a model.
_WORKING = ("onnx", "openvino")
_CHILD = "from timmx.backends.saved_model import _convert_main; _convert_main()"
# TensorFlow's C++ logging: errors only (its INFO lines about CPU instructions, oneDNN...).
_TF_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
_RETRIED = "converted without onnx2tf's strict mode"


class SavedModelOptions(BackendOptions):
    nhwc_input: bool = Field(
        False, description="Take channels-last (N, H, W, C) input instead of (N, C, H, W)."
    )
    opset: int = Field(18, ge=13, le=23, description="ONNX opset of the intermediate model.")


@register
class SavedModelBackend(Backend):
    name = "saved-model"
    help = "TensorFlow SavedModel (a folder) via onnx2tf from ONNX, verified in TensorFlow."
    suffix = ".saved_model"
    folder_suffixes = (".saved_model",)
    any_folder_name = True  # `resnet18_saved_model/`, as Ultralytics names it, or NAME.saved_model
    noisy_loggers = ("torch.onnx", "onnxscript", "absl", "tensorflow")
    quiet_environment = _TF_QUIET
    requires = (
        "torch", "timm", "onnx", "onnxscript", "onnxslim", "tensorflow", "tf-keras", "onnx2tf",
        "onnx-graphsurgeon", "sng4onnx", "psutil", "requests", "flatbuffers", "ai-edge-litert",
        "onnxruntime",  # onnx2tf runs the ONNX in it to check each op's conversion
    )  # fmt: skip
    # The oldest tried: onnx2tf 1.22.6 to 1.27.10 with tensorflow 2.19.1 (tf-keras 2.19.0).
    supported = ("tensorflow>=2.19.1", "onnx2tf>=1.22.6")
    Options = SavedModelOptions
    runtime_name = "tensorflow (tf.saved_model.load, serving_default)"

    def owns_existing(self, path: Path) -> bool:
        """A folder holding saved_model.pb and nothing but a SavedModel's own entries, its
        variables/ nothing but variables.* files."""
        if not path.is_dir() or path.is_symlink():
            return False
        present = {p.name for p in path.iterdir()}
        if "saved_model.pb" not in present or not present <= _LAYOUT:
            return False
        variables = path / "variables"
        return not variables.is_dir() or all(
            p.is_file() and not p.is_symlink() and p.name.startswith("variables.")
            for p in variables.iterdir()
        )

    def export(self, ctx: ExportContext, options: SavedModelOptions) -> list[Path]:
        return self.write(ctx, options, split_groups=False)

    def write(
        self, ctx: ExportContext, options: SavedModelOptions, split_groups: bool
    ) -> list[Path]:
        """The export; `split_groups` has onnx2tf write grouped and depthwise convolutions as
        ones TF.js runs (its conv2d takes no groups), which TensorFlow itself does not need."""
        from timmx.backends.onnx import OnnxOptions

        scratch = ctx.artifact.parent / "saved-model-onnx"  # private staging, removed afterwards
        scratch.mkdir()
        onnx_file = scratch / "model.onnx"
        onnx = get_backend("onnx")
        onnx.export(replace(ctx, artifact=onnx_file), OnnxOptions(opset=options.opset))
        request = {
            "onnx": str(onnx_file),
            "work": str(scratch / "onnx2tf"),
            "folder": str(ctx.artifact),
            "nhwc": options.nhwc_input,
            "channels": int(ctx.example_input.shape[1]),
            "split_groups": split_groups,
        }
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(request)],
            capture_output=True,
            text=True,
            cwd=scratch,
            env={**os.environ, **_TF_QUIET},
        )
        output = (run.stdout + run.stderr).splitlines()
        if run.returncode != 0 or not (ctx.artifact / "saved_model.pb").is_file():
            raise ExportFailedError(
                f"onnx2tf cannot convert {ctx.job.model.name}: {_reason(output, run.returncode)}; "
                f"export it with another backend ({', '.join(_WORKING)})"
            )
        if _RETRIED in output:
            ctx.details["onnx2tf"] = f"{_RETRIED} (its shape search fixed the batch to 1)"
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: SavedModelOptions) -> Runtime:
        import numpy as np

        signature = load_signature(artifact)

        def run(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x, dtype=np.float32)
            if options.nhwc_input:
                x = x.transpose(0, 2, 3, 1)
            with native_output():
                y = signature(input=np.ascontiguousarray(x))["output"]
            return np.asarray(y, dtype=np.float32).reshape(x.shape[0], -1)

        return run

    def inspect_artifact(self, artifact: Path, options: SavedModelOptions) -> dict[str, Any]:
        signature = load_signature(artifact)
        (spec,) = signature.structured_input_signature[1].values()
        outputs = signature.structured_outputs
        return {
            "signature": SIGNATURE,
            "layout": "NHWC" if options.nhwc_input else "NCHW",
            "input_shape": spec.shape.as_list(),
            "output_shape": outputs["output"].shape.as_list(),
            "bytes": sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()),
        }


def load_signature(artifact: Path) -> Any:
    """The SavedModel's `serving_default` signature (keyword `input`, returns {"output": ...}),
    loaded in TensorFlow with its C++ logging held to errors."""
    try:
        with native_output():  # TensorFlow's C++ logs (CUDA probing...) go to descriptor 2
            tf = import_tensorflow()
            loaded = tf.saved_model.load(str(artifact))
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
        raise ExportFailedError(f"TensorFlow could not load {artifact}: {first[0][:200]}") from None
    if SIGNATURE not in loaded.signatures:
        raise ExportFailedError(f"{artifact} has no {SIGNATURE} signature")
    signature = loaded.signatures[SIGNATURE]
    signature._timmx_owner = loaded  # keep the loaded object (and its variables) alive
    return signature


def import_tensorflow() -> Any:
    """TensorFlow, quiet, after triton (see timmx.backends._load_order)."""
    load_triton_before_tensorflow()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnx2tf colours its ERROR: prefixes
_RAISED = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)\b|error: )")


def _reason(output: list[str], code: int) -> str:
    """onnx2tf's last exception (or the child's own `error: ...`), and the ONNX node it failed
    on where it names one; else its last words."""
    lines = [line for line in (_ANSI.sub("", ln).strip() for ln in output) if line]
    raised = [ln for ln in lines if _RAISED.match(ln)]
    if raised:
        reason = raised[-1].removeprefix("error: ").rstrip(".")[:200]
    elif code < 0:
        reason = f"it crashed (signal {-code}) after: {(lines or ['no output'])[-1][:160]}"
    else:
        reason = (lines or ["no output"])[-1][:160]
    node = [ln.split(":", 2)[2].strip() for ln in lines if ln.startswith("ERROR: onnx_op_name:")]
    return f"{reason} (at its ONNX node {node[-1]})" if node else reason


def _convert_main() -> None:
    """In the child process: convert with onnx2tf, then save its Keras model as a SavedModel
    with one `serving_default` signature, "input" (dynamic batch where the ONNX has one) to
    "output"."""
    request = json.loads(sys.argv[1])
    import numpy as np
    import onnx2tf
    import onnx2tf.onnx2tf as entry
    import tensorflow as tf

    def local_samples() -> np.ndarray:  # onnx2tf's own checks: noise rather than a download
        return np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)

    entry.download_test_image_data = local_samples

    def convert(strict: bool) -> Any:
        model = onnx2tf.convert(
            input_onnx_file_path=request["onnx"],
            output_folder_path=request["work"],
            keep_ncw_or_nchw_or_ncdhw_input_names=None if request["nhwc"] else ["input"],
            not_use_onnxsim=True,  # the onnx backend's export is slimmed already
            disable_strict_mode=not strict,
            disable_group_convolution=request["split_groups"],
            disable_model_save=True,
            non_verbose=True,
        )
        if model is None:
            sys.exit("error: onnx2tf returned no model")
        return model

    model = convert(strict=True)
    if model.inputs[0].shape[0] is None and model.outputs[0].shape[0] is not None:
        # Strict mode picks a reduction's axes by comparing them on a batch of one: where the
        # last feature map is 1x1 (small inputs) it may reduce over the batch and fix it to 1.
        print(_RETRIED, file=sys.stderr)
        model = convert(strict=False)
    (source,) = model.inputs
    shape = list(source.shape)  # the batch is None where the ONNX batch is dynamic
    channels = shape[-1] if request["nhwc"] else shape[1]
    if channels != request["channels"]:
        sys.exit(f"error: onnx2tf laid the input out as {shape}")

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
    def serve(input: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"output": model(input)}

    signature = serve.get_concrete_function()
    module = tf.Module()
    module.model = model
    # onnx2tf makes some weights outside any layer (ConvNeXt's and RegNetY's depthwise kernels):
    # Keras does not track them, and a SavedModel saves only tracked variables.
    module.weights = list(signature.variables)
    tf.saved_model.save(module, request["folder"], signatures={SIGNATURE: signature})
