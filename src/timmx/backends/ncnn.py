"""ncnn (.param + .bin in a folder) through pnnx, verified with the ncnn Python runtime.

A `NAME.ncnn` folder holds `NAME.param` and `NAME.bin`. A folder of any other name is laid out
as upstream timmx lays out its `resnet18_ncnn/`: `model.ncnn.param`, `model.ncnn.bin` and
`model_ncnn.py`, pnnx's small Python loader (which finds the files beside itself).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from pydantic import Field

from timmx.backends import register
from timmx.backends.base import FP16, FP32, Backend, BackendOptions, ExportContext, Runtime
from timmx.contract import ExportJob
from timmx.errors import ExportFailedError, InvalidInputError

# pnnx leaves ops it cannot lower under their torch names (Tensor.reshape, torch.unbind, F.x...);
# ncnn's own layer names never contain a dot.
_UNLOWERED = re.compile(r"^(?:Tensor|torch|F|nn|aten|prim)\.\S+$")


class NcnnOptions(BackendOptions):
    fp16: bool = Field(True, description="Store weights as fp16 (ncnn's usual deployment form).")


UPSTREAM_STEM = "model.ncnn"  # upstream timmx's file names, in folders not named NAME.ncnn
LOADER = "model_ncnn.py"


def files_of(folder: Path) -> tuple[Path, Path]:
    """The .param and .bin files of an ncnn artifact folder."""
    stem = folder.stem if folder.suffix == ".ncnn" else UPSTREAM_STEM
    return folder / f"{stem}.param", folder / f"{stem}.bin"


@register
class NcnnBackend(Backend):
    name = "ncnn"
    help = "ncnn model (a folder with .param and .bin) via pnnx, verified in ncnn."
    suffix = ".ncnn"
    folder_suffixes = (".ncnn",)
    any_folder_name = True  # `resnet18_ncnn/`, as upstream timmx names it, or NAME.ncnn
    requires = ("torch", "timm", "pnnx", "ncnn")
    supported = ("ncnn>=1.0.20261020", "pnnx>=20261020")  # the oldest tried or shipped
    Options = NcnnOptions
    runtime_name = "ncnn"
    runtime_threads = 1
    runtime_any_batch = True

    def owns_existing(self, path: Path) -> bool:
        """A folder holding its .param and .bin (and upstream's loader), nothing else."""
        if not path.is_dir() or path.is_symlink():
            return False
        param, weights = files_of(path)
        made = {param.name, weights.name} | ({LOADER} if path.suffix != ".ncnn" else set())
        present = {p.name for p in path.iterdir()}
        return (
            param.name in present
            and present <= made
            and all((path / name).is_file() and not (path / name).is_symlink() for name in present)
        )

    def default_suffix(self, options: NcnnOptions) -> str:
        return "_ncnn"  # resnet18_ncnn/, as upstream timmx names it

    def check(self, job: ExportJob, options: NcnnOptions) -> None:
        if job.input.dynamic_batch or job.input.batch_size != 1:
            raise InvalidInputError(
                "ncnn runs one image at a time (its tensors have no batch dimension): "
                "drop --dynamic-batch and --batch-size"
            )

    def tolerance(self, options: NcnnOptions):
        return FP16 if options.fp16 else FP32

    def export(self, ctx: ExportContext, options: NcnnOptions) -> list[Path]:
        import pnnx
        import torch

        folder = ctx.artifact
        folder.mkdir()
        param, weights = files_of(folder)
        upstream_layout = folder.suffix != ".ncnn"
        scratch = folder.parent / "pnnx"  # staging is private and removed afterwards
        scratch.mkdir()
        traced = scratch / "model.pt"
        with torch.no_grad():
            module = torch.jit.trace(ctx.model.cpu(), ctx.example_input.cpu(), check_trace=False)
        module.save(str(traced))
        shape = ",".join(str(d) for d in ctx.example_input.shape)
        side = {key: scratch / name for key, name in _SIDE_OUTPUTS.items()}
        if upstream_layout:
            side["ncnnpy"] = folder / LOADER
        command = [
            pnnx.EXEC_PATH,
            str(traced),
            f"inputshape=[{shape}]f32",
            "device=cpu",
            f"fp16={int(options.fp16)}",
            f"ncnnparam={param}",
            f"ncnnbin={weights}",
            *(f"{key}={path}" for key, path in side.items()),
        ]
        run = subprocess.run(command, capture_output=True, text=True, cwd=scratch)
        if run.returncode != 0 or not param.exists():
            last = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
            raise ExportFailedError(f"pnnx failed on {ctx.job.model.name}: {last[0][:200]}")
        unlowered = unlowered_layers(param)
        if unlowered:
            ops = ", ".join(f"{op} (x{n})" for op, n in unlowered.most_common(4))
            ignored = next((ln for ln in run.stderr.splitlines() if ln.startswith("ignore")), "")
            raise ExportFailedError(
                f"ncnn cannot run {ctx.job.model.name}: pnnx could not lower {ops}"
                + (f" ({ignored[:140]})" if ignored else "")
                + "; try another backend (onnx, litert) for this architecture"
            )
        loader = folder / LOADER
        if loader.exists():
            loader.write_text(relocatable_loader(loader.read_text(), param, weights))
        return [folder]

    def load_runtime(self, artifact: Path, options: NcnnOptions) -> Runtime:
        import ncnn
        import numpy as np

        net = ncnn.Net()
        # One thread: on a busy 2-core machine more threads ran 10 to 500 times slower.
        net.opt.num_threads = 1
        if not options.fp16:
            net.opt.use_fp16_storage = net.opt.use_fp16_packed = False
            net.opt.use_fp16_arithmetic = False
        param, weights = files_of(artifact)
        if net.load_param(str(param)) or net.load_model(str(weights)):
            raise ExportFailedError(f"ncnn could not load {artifact}")

        def run(x: np.ndarray) -> np.ndarray:
            outputs = []
            for sample in x.astype(np.float32):  # ncnn tensors are C, H, W
                extractor = net.create_extractor()
                extractor.input("in0", ncnn.Mat(np.ascontiguousarray(sample)))
                status, out = extractor.extract("out0")
                if status != 0:
                    raise ExportFailedError(f"ncnn failed to run {artifact} (status {status})")
                outputs.append(np.array(out).copy())
            return np.stack(outputs)

        return run

    def inspect_artifact(self, artifact: Path, options: NcnnOptions) -> dict:
        layers = _layer_types(files_of(artifact)[0])
        return {"layers": dict(sorted(Counter(layers).items())), "fp16_weights": options.fp16}


# pnnx writes these beside its work; keep them out of the artifact folder.
_SIDE_OUTPUTS = {
    "pnnxparam": "model.pnnx.param",
    "pnnxbin": "model.pnnx.bin",
    "pnnxpy": "model_pnnx.py",
    "pnnxonnx": "model.pnnx.onnx",
    "ncnnpy": "model_ncnn.py",
}


def relocatable_loader(source: str, param: Path, weights: Path) -> str:
    """pnnx's loader names the files by the absolute paths it wrote them to (here, a staging
    folder that is gone after the export): name them beside the loader instead."""
    for path in (param, weights):
        source = source.replace(
            f'"{path.as_posix()}"',
            f'os.path.join(os.path.dirname(os.path.abspath(__file__)), "{path.name}")',
        )
    return "import os\n" + source


def _layer_types(param: Path) -> list[str]:
    lines = param.read_text().splitlines()[2:]  # magic number, then layer and blob counts
    return [line.split()[0] for line in lines if line.strip()]


def unlowered_layers(param: Path) -> Counter[str]:
    return Counter(t for t in _layer_types(param) if _UNLOWERED.match(t))
