"""TensorFlow.js graph model (a folder: model.json + weight shards) through tensorflowjs's
converter from the saved-model backend's export, verified in Node.js with TF.js itself.

The intermediate SavedModel is the saved-model backend's (timm -> ONNX -> onnx2tf), written in
the private staging folder and removed with it; its input layout (NCHW) carries over.
`--quantize float16|uint8` stores the weights as tensorflowjs_converter's --quantize_float16 or
--quantize_uint8 do (half or a quarter of the size; TF.js expands them to float32 at load).

The converter runs in a child process (it imports TensorFlow, TF-DF and TF Hub and prints from
C++): its output is kept for the error. The artifact runs in Node.js on TF.js's pure JS CPU
backend (tfjs-core, tfjs-backend-cpu, tfjs-converter 4.22: what @tensorflow/tfjs runs a graph
model with), through `_tfjs/run.js`: the runtime a browser or a Node.js app uses. The image
installs them in node's global folder (images/tfjs/setup.sh), where require() finds them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from timmx.backends import get_backend, register
from timmx.backends.base import (
    FP16,
    FP32,
    INT8,
    Backend,
    BackendOptions,
    ExportContext,
    Runtime,
    Tolerance,
)
from timmx.backends.saved_model import SavedModelBackend, SavedModelOptions
from timmx.errors import ExportFailedError

RUNNER = Path(__file__).with_name("_tfjs") / "run.js"
MODEL_JSON = "model.json"
TOLERANCES: dict[str, Tolerance] = {"none": FP32, "float16": FP16, "uint8": INT8}
# tensorflowjs_converter's Python API (what its CLI calls), in a child process.
_CONVERT = (
    "import json, sys\n"
    "from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model\n"
    "convert_tf_saved_model(sys.argv[1], sys.argv[2], signature_def='serving_default',\n"
    "    saved_model_tags='serve', quantization_dtype_map=json.loads(sys.argv[3]) or None)\n"
)
_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
_WORKING = ("onnx", "litert")  # what a model TF.js cannot take exports with instead
# The converter's graph optimisation, with oneDNN on, fuses layer norms into _MklLayerNorm, an op
# TF.js has no kernel for (a ViT's conversion fails on it); oneDNN speeds up nothing here.
_CONVERTER_ENV = {**_QUIET, "TF_ENABLE_ONEDNN_OPTS": "0"}


class TfjsOptions(BackendOptions):
    nhwc_input: bool = Field(
        False, description="Take channels-last (N, H, W, C) input instead of (N, C, H, W)."
    )
    quantize: Literal["none", "float16", "uint8"] = Field(
        "none",
        description="Weights: none (float32); float16 (half the size) or uint8 (a quarter, "
        "affine per tensor), as tensorflowjs_converter's --quantize_float16 / "
        "--quantize_uint8. TF.js computes in float32 either way.",
    )


def weight_files(folder: Path) -> list[str]:
    """The shard names model.json lists, in its order."""
    manifest = json.loads((folder / MODEL_JSON).read_text()).get("weightsManifest", [])
    return [name for group in manifest for name in group.get("paths", [])]


@register
class TfjsBackend(Backend):
    name = "tfjs"
    help = "TensorFlow.js graph model (model.json + shards) via SavedModel, verified in Node.js."
    suffix = ".tfjs"
    folder_suffixes = (".tfjs",)
    any_folder_name = True  # `resnet18_web_model/`, as TF.js's examples name them, or NAME.tfjs
    noisy_loggers = ("torch.onnx", "onnxscript", "tensorflow", "absl")
    quiet_environment = _QUIET
    requires = (*SavedModelBackend.requires, "tensorflowjs")
    # tensorflowjs: the oldest tried or shipped; setuptools: tensorflow-hub (which tensorflowjs
    # imports) needs pkg_resources, gone from setuptools 82 on (neither declares it)
    supported = ("tensorflowjs>=4.22.0", "setuptools<82")
    isolated_only = (
        "tensorflowjs 4.22 needs tensorflow<=2.19 through tensorflow-decision-forests, so "
        "numpy<2.2; and its runtime is Node.js with TF.js"
    )
    install_hint = "it runs in its Docker image: add --isolated"
    Options = TfjsOptions
    runtime_name = "tfjs (Node.js, CPU backend)"
    runtime_threads = 1  # TF.js's pure JS CPU backend runs on one thread

    def owns_existing(self, path: Path) -> bool:
        """A folder holding model.json and the shards it lists, nothing else."""
        if not path.is_dir() or path.is_symlink() or not (path / MODEL_JSON).is_file():
            return False
        try:
            made = {MODEL_JSON, *weight_files(path)}
        except (ValueError, OSError, AttributeError, TypeError):
            return False
        present = {p.name for p in path.iterdir()}
        return present <= made and all(
            (path / name).is_file() and not (path / name).is_symlink() for name in present
        )

    def default_suffix(self, options: TfjsOptions) -> str:
        return "_web_model"

    def tolerance(self, options: TfjsOptions) -> Tolerance:
        return TOLERANCES[options.quantize]

    def export(self, ctx: ExportContext, options: TfjsOptions) -> list[Path]:
        scratch = ctx.artifact.parent / "tfjs-saved-model"  # staging is private, removed after
        scratch.mkdir()
        saved = scratch / "model.saved_model"
        saved_model = get_backend("saved-model")
        assert isinstance(saved_model, SavedModelBackend)
        saved_model.write(
            replace(ctx, artifact=saved),
            SavedModelOptions(nhwc_input=options.nhwc_input),
            split_groups=True,
        )
        dtypes = {} if options.quantize == "none" else {options.quantize: True}
        command = [
            sys.executable,
            "-c",
            _CONVERT,
            str(saved),
            str(ctx.artifact),
            json.dumps(dtypes),
        ]
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=scratch,
            env={**os.environ, **_CONVERTER_ENV},
        )
        if run.returncode != 0 or not (ctx.artifact / MODEL_JSON).is_file():
            shutil.rmtree(ctx.artifact, ignore_errors=True)
            raise ExportFailedError(
                f"tensorflowjs's converter cannot take {ctx.job.model.name}: "
                f"{_reason(run.stdout + run.stderr)}; export it with another backend "
                f"({', '.join(_WORKING)})"
            )
        return [ctx.artifact]

    def load_runtime(self, artifact: Path, options: TfjsOptions) -> Runtime:
        import numpy as np

        node = node_binary()

        def run(x: np.ndarray) -> np.ndarray:
            batch = x.shape[0]
            x = np.asarray(x, dtype="<f4")
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if options.nhwc_input else x)
            with tempfile.TemporaryDirectory(prefix="timmx-tfjs.") as tmp:
                given, taken = Path(tmp) / "input.bin", Path(tmp) / "output.bin"
                given.write_bytes(x.tobytes())
                command = [node, str(RUNNER), str(artifact), str(given), str(taken)]
                answer = _node(command + [str(d) for d in x.shape], f"run {artifact.name}")
                shape = answer["shape"]
                values = np.frombuffer(taken.read_bytes(), dtype="<f4").astype(np.float32)
            return values.reshape(shape).reshape(batch, -1)

        return run

    def inspect_artifact(self, artifact: Path, options: TfjsOptions) -> dict[str, Any]:
        model = json.loads((artifact / MODEL_JSON).read_text())
        weights = [w for group in model.get("weightsManifest", []) for w in group["weights"]]
        stored = sorted({w.get("quantization", {}).get("dtype", w["dtype"]) for w in weights})
        nodes = model.get("modelTopology", {}).get("node", [])
        ops: dict[str, int] = {}
        for node in nodes:
            ops[node.get("op", "?")] = ops.get(node.get("op", "?"), 0) + 1
        shards = weight_files(artifact)
        facts: dict[str, Any] = {
            "quantize": options.quantize,
            "layout": "NHWC" if options.nhwc_input else "NCHW",
            "format": model.get("format"),
            "converted_by": model.get("convertedBy"),
            "weights_stored_as": stored,
            "shards": len(shards),
            "weight_bytes": sum((artifact / name).stat().st_size for name in shards),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12]),
        }
        node = shutil.which("node")
        if node:
            facts["runtime"] = _node([node, str(RUNNER), "info"], "report its versions")
        return facts


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise ExportFailedError(
            "Node.js (`node`) is not on PATH: the tfjs backend verifies in its Docker image, "
            "add --isolated"
        )
    return node


def _node(command: list[str], doing: str) -> dict[str, Any]:
    run = subprocess.run(command, capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    if run.returncode != 0 or not lines:
        reason = _reason(run.stderr)
        if "has not been implemented for the CPU backend" in reason:
            # e.g. MobileNetV3's hardswish, which the converter fuses into its convolutions
            reason += (
                ": TF.js's CPU backend, which verifies here, lacks that op; export the model "
                f"with another backend ({', '.join(_WORKING)})"
            )
        raise ExportFailedError(f"TF.js in Node.js failed to {doing}: {reason}")
    return json.loads(lines[-1])


def _reason(output: str) -> str:
    """The last error a child printed (a Python traceback's last line, a JS error's first)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line.lower().split(":", 1)[0]:
            return line[:240]
    return (lines or ["no output"])[-1][:240]
