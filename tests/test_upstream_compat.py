"""Upstream timmx's README commands (PyPI `timmx` 0.4.4 and 0.10.1) run unchanged here.

Each command is copied from upstream's README (TensorRT excepted) and
rewritten only where this machine must differ: `--pretrained` becomes a local checkpoint of a
randomly initialised model, images and tensors for calibration are generated, and inputs are
64x64 (`--input-size 3 64 64`) to keep the suite fast. Every export must exit 0 with a passed
verification in its report, or, where the artifact's runtime exists only on Apple devices, a
report that says its numerics were not checked. Then the flags whose numerics upstream defines
are checked against independent references.
"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from tests.conftest import assert_matches, reference_model, require_backend
from tests.isolated.conftest import docker_client  # noqa: F401 - for the executorch cells
from tests.test_calibration import write_images
from tests.test_conformance import BOUNDS, RUNNERS, Bound, Case, assert_within
from tests.test_errors import assert_refused

SIZE = 64
CHECKPOINT = "./checkpoints/model.pth"
ON_APPLE = sys.platform == "darwin"

# (upstream versions whose README has it, the command as printed there, numerics checkable here)
README: list[tuple[str, str, bool]] = [
    ("0.4.4 0.10.1", "export onnx resnet18 --pretrained --output ./artifacts/resnet18.onnx", True),
    (
        "0.4.4 0.10.1",
        "export onnx resnet18 --checkpoint ./checkpoints/model.pth --input-size 3 224 224 "
        "--dynamic-batch --output ./artifacts/resnet18_finetuned.onnx",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export onnx resnet18 --pretrained --normalize --softmax "
        "--output ./artifacts/resnet18_with_preprocess.onnx",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export onnx resnet18 --pretrained --no-slim --output ./artifacts/resnet18.onnx",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --pretrained --convert-to mlprogram --compute-precision float16 "
        "--output ./artifacts/resnet18.mlpackage",
        True,
    ),
    (
        "0.4.4",
        "export coreml resnet18 --pretrained --source torch-export --convert-to mlprogram "
        "--compute-precision float16 --output ./artifacts/resnet18_te.mlpackage",
        True,
    ),
    (
        "0.10.1",
        "export coreml resnet18 --pretrained --source trace --convert-to mlprogram "
        "--compute-precision float16 --output ./artifacts/resnet18_traced.mlpackage",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --dynamic-batch --batch-size 2 --batch-upper-bound 8 "
        "--output ./artifacts/resnet18_dynamic.mlpackage",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --pretrained --convert-to mlprogram --compute-precision float16 "
        "--int8 --output ./artifacts/resnet18_int8.mlpackage",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --pretrained --convert-to mlprogram --compute-precision float16 "
        "--int4 --output ./artifacts/resnet18_int4.mlpackage",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --pretrained --convert-to neuralnetwork --half "
        "--output ./artifacts/resnet18_half.mlmodel",
        ON_APPLE,  # a neural network runs only in Core ML itself
    ),
    (
        "0.4.4 0.10.1",
        "export coreml resnet18 --pretrained --convert-to neuralnetwork --int8 "
        "--output ./artifacts/resnet18_int8.mlmodel",
        ON_APPLE,
    ),
    (
        "0.10.1",
        "export coreml resnet18 --pretrained --normalize --softmax --image-input "
        "--class-labels ./imagenet_labels.txt --output ./artifacts/resnet18_classifier.mlpackage",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode fp16 --output ./artifacts/resnet18_fp16.tflite",
        True,
    ),
    (
        "0.10.1",
        "export litert resnet18 --mode dynamic-int8 "
        "--output ./artifacts/resnet18_dynamic_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode int8 --calibration-data ./my-images/ "
        "--output ./artifacts/resnet18_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode int8 --calibration-data ./my-images/ "
        "--calibration-samples 64 --output ./artifacts/resnet18_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode int8 --calibration-data ./my-images/ "
        "--mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --output ./artifacts/resnet18_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode int8 --calibration-data ./calibration.pt "
        "--calibration-steps 8 --output ./artifacts/resnet18_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode int8 --random-calibration "
        "--output ./artifacts/resnet18_int8.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export litert resnet18 --mode fp32 --nhwc-input --output ./artifacts/resnet18_nhwc.tflite",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export ncnn resnet18 --pretrained --output ./artifacts/resnet18_ncnn",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export ncnn resnet18 --pretrained --no-fp16 --output ./artifacts/resnet18_ncnn_fp32",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --output ./artifacts/resnet18.pte",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --delegate coreml "
        "--output ./artifacts/resnet18_coreml.pte",
        False,  # the Core ML delegate runs only on Apple devices
    ),
    (
        "0.10.1",
        "export executorch swin_tiny_patch4_window7_224 --pretrained --delegate mlx "
        "--output ./artifacts/swin_tiny_mlx.pte",
        False,  # MLX runs only on Apple silicon
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --delegate coreml --compute-precision float32 "
        "--output ./artifacts/resnet18_coreml_fp32.pte",
        False,
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --mode int8 --calibration-data ./my-images/ "
        "--output ./artifacts/resnet18_int8.pte",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --mode int8 --calibration-data ./my-images/ "
        "--mean 0.5 0.5 0.5 --std 0.5 0.5 0.5 --output ./artifacts/resnet18_int8.pte",
        True,
    ),
    (
        "0.10.1",
        "export executorch vit_tiny_patch16_224 --pretrained --mode dynamic-int8 "
        "--output ./artifacts/vit_tiny_dynamic_int8.pte",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export executorch resnet18 --pretrained --delegate coreml --mode int8 "
        "--random-calibration --output ./artifacts/resnet18_coreml_int8.pte",
        False,
    ),
    (
        "0.4.4",
        "export executorch resnet18 --pretrained --dynamic-batch --batch-size 2 "
        "--output ./artifacts/resnet18_dynamic.pte",
        True,
    ),
    (
        "0.10.1",
        "export executorch resnet18 --pretrained --dynamic-batch --batch-size 2 "
        "--batch-upper-bound 16 --output ./artifacts/resnet18_dynamic.pte",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export torch-export resnet18 --pretrained --dynamic-batch --batch-size 2 "
        "--output ./artifacts/resnet18.pt2",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export torchscript resnet18 --pretrained --output ./artifacts/resnet18.pt",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export torchscript resnet18 --pretrained --normalize "
        "--output ./artifacts/resnet18_normalized.pt",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export torchscript resnet18 --pretrained --normalize --mean 0.5 0.5 0.5 "
        "--std 0.5 0.5 0.5 --output ./artifacts/resnet18_custom_norm.pt",
        True,
    ),
    (
        "0.4.4 0.10.1",
        "export torchscript resnet18 --pretrained --method script "
        "--output ./artifacts/resnet18_scripted.pt",
        True,
    ),
    ("0.10.1", "export openvino resnet18 --pretrained --output ./artifacts/resnet18.xml", True),
    (
        "0.10.1",
        "export openvino resnet18 --pretrained --dynamic-batch --no-fp16 "
        "--output ./artifacts/resnet18_dynamic.xml",
        True,
    ),
    ("0.10.1", "export coreai resnet18 --pretrained --output ./artifacts/resnet18.aimodel", True),
    (
        "0.10.1",
        "export coreai resnet18 --pretrained --batch-size 2 --dynamic-batch "
        "--output ./artifacts/resnet18_dynamic.aimodel",
        True,  # coreai-core's own runtime runs the asset on Linux too
    ),
    # 0.10.1's prose: --output is optional, `<model name>.<ext>` (ncnn: `<model name>_ncnn/`).
    ("0.10.1", "export onnx resnet18 --pretrained", True),
    ("0.10.1", "export ncnn resnet18 --pretrained", True),
]


def rewrite(command: str) -> list[str]:
    """Upstream's command as run here: a local checkpoint for `--pretrained` (random weights
    for the models only the executorch cells use), 64x64 inputs for resnet18."""
    args = shlex.split(command)
    model = args[2]
    if "--pretrained" in args:
        at = args.index("--pretrained")
        args[at : at + 1] = ["--checkpoint", CHECKPOINT] if model == "resnet18" else []
    if model == "resnet18":
        if "--input-size" in args:
            at = args.index("--input-size")
            args[at + 1 : at + 4] = ["3", str(SIZE), str(SIZE)]
        else:
            args += ["--input-size", "3", str(SIZE), str(SIZE)]
    return args


def artifact_of(args: list[str]) -> Path:
    if "--output" in args:
        return Path(args[args.index("--output") + 1])
    return Path("resnet18_ncnn" if args[1] == "ncnn" else "resnet18.onnx")


def installed(name: str) -> bool:
    from timmx.backends import get_backend

    return not get_backend(name).missing_packages()


# ExecuTorch cells whose export in its image another isolated test already makes: each image run
# takes about 40 s on 2 cores. They are parsed and checked through the CLI's own path here
# (test_every_executorch_readme_cell_parses); where their export runs is named beside them.
EXECUTORCH_RUN_ELSEWHERE = {
    "export executorch resnet18 --pretrained --output ./artifacts/resnet18.pte":
        "test_conformance.py's executorch-xnnpack-fp32",
    "export executorch resnet18 --pretrained --delegate coreml "
    "--output ./artifacts/resnet18_coreml.pte":
        "test_isolated_executorch_ncnn.py's coreml delegate test",
    "export executorch resnet18 --pretrained --delegate coreml --compute-precision float32 "
    "--output ./artifacts/resnet18_coreml_fp32.pte": "the coreml --mode int8 cell",
    "export executorch resnet18 --pretrained --mode int8 --calibration-data ./my-images/ "
    "--output ./artifacts/resnet18_int8.pte": "the same cell with --mean/--std",
    "export executorch resnet18 --pretrained --dynamic-batch --batch-size 2 "
    "--output ./artifacts/resnet18_dynamic.pte": "the same cell with --batch-upper-bound",
}  # fmt: skip


def _cell_param(cell: tuple[str, str, bool]):
    """ExecuTorch links its own torch, so its cells run in its image (`--isolated`) where this
    venv lacks it: they need Docker, as every isolated test does."""
    backend = shlex.split(cell[1])[1]
    marks = [pytest.mark.isolated] if backend == "executorch" else []
    return pytest.param(cell, id=_id(cell), marks=marks)


EXECUTORCH_CELLS = [c for c in README if shlex.split(c[1])[1] == "executorch"]


@pytest.fixture(scope="session")
def upstream_inputs(tmp_path_factory: pytest.TempPathFactory, make_checkpoint) -> Path:
    """What upstream's README commands read: a checkpoint, images, a tensor, class labels."""
    folder = tmp_path_factory.mktemp("upstream-inputs")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints/model.pth").symlink_to(make_checkpoint("resnet18"))
    write_images(folder / "my-images", 20, size=(96, 80))
    generator = torch.Generator().manual_seed(3)
    torch.save(torch.randn(16, 3, SIZE, SIZE, generator=generator), folder / "calibration.pt")
    labels = "\n".join(f"class {i}" for i in range(1000))
    (folder / "imagenet_labels.txt").write_text(labels + "\n")
    return folder


@pytest.fixture
def upstream_dir(workdir: Path, upstream_inputs: Path) -> Path:
    for item in upstream_inputs.iterdir():
        (workdir / item.name).symlink_to(item)
    return workdir


def _id(cell: tuple[str, str, bool]) -> str:
    args = shlex.split(cell[1])
    out = args[args.index("--output") + 1] if "--output" in args else "default-output"
    return f"{args[1]}-{Path(out).name}-{'+'.join(cell[0].split())}"


@pytest.mark.parametrize(
    "cell", [_cell_param(c) for c in README if c[1] not in EXECUTORCH_RUN_ELSEWHERE]
)
def test_readme_command(cli, upstream_dir, request, cell):
    _, command, checked = cell
    args = rewrite(command)
    if not installed(args[1]):
        request.getfixturevalue("docker_client")  # no engine: skipped, or failed in CI
        args.append("--isolated")
    result = cli(*args)
    if "mlx" in args and sys.platform != "darwin":
        # executorch's Linux wheels lack the MLX serializer: one line saying where it works
        errors = [line for line in result.err.splitlines() if line.startswith("error:")]
        assert result.code == 2 and len(errors) == 1, result.err
        assert "--delegate mlx" in errors[0] and "macOS" in errors[0]
        assert "Traceback" not in result.err
        return
    assert result.code == 0, result.err
    artifact = upstream_dir / artifact_of(args)
    report = result.report(artifact)
    assert report["status"] == "success"
    verification = report["verification"]
    if not checked:
        assert verification["status"] == "skipped"  # converted, its numerics not checked
        assert re.search(r"numerics (were )?not", verification["note"]), verification["note"]
        return
    assert verification["status"] == "passed", verification
    if "--image-input" in args:
        return  # takes an image and names a label: test_coreml_class_labels_is_labels runs it
    check_in_runtime(args, artifact)


def check_in_runtime(args: list[str], artifact: Path) -> None:
    """Run the artifact in its own runtime (the conformance suite's runners) on samples like
    its calibration data, against a timm model built here from the same weights: the local
    checkpoint, or the seeded random weights timmx uses without one (seed 0)."""
    backend, model = args[1], args[2]
    case = Case(flags=tuple(args), precision=_precision(args))
    size = SIZE if model == "resnet18" else 224
    generator = torch.Generator().manual_seed(5)
    pixels = torch.rand(6, 3, size, size, generator=generator)
    if "--checkpoint" in args:
        reference = reference_model(model, Path(args[args.index("--checkpoint") + 1]))
    else:
        torch.manual_seed(0)
        reference = timm.create_model(model, pretrained=False).eval()
    cfg = reference.pretrained_cfg
    mean, std = (
        torch.tensor(_three(args, f"--{key}") or cfg[key]).view(1, 3, 1, 1)
        for key in ("mean", "std")
    )
    model_input = (pixels - mean) / std  # with --mean/--std alone: as the calibration data
    x = pixels if "--normalize" in args else model_input  # --normalize: the artifact does it
    with torch.no_grad():
        expected = reference(model_input)
        if "--softmax" in args:
            expected = expected.softmax(-1)
    actual = np.asarray(RUNNERS[backend](artifact, x.numpy(), case), dtype=np.float32)
    assert_within(
        actual, expected.numpy(), README_BOUNDS.get(case.precision, BOUNDS[case.precision])
    )


# The int8 cells run upstream's commands on resnet18's seeded random weights, whose 1000 logits
# nearly tie (timm zero-initialises the residual branches' last norm): top-1 agreement is noise
# there, and int8 errs more over them than over test_resnet's 10. The error bound is the check.
README_BOUNDS = {"int8": Bound(0.35, quantized=True)}


def _three(args: list[str], flag: str) -> list[float] | None:
    if flag not in args:
        return None
    at = args.index(flag)
    return [float(v) for v in args[at + 1 : at + 4]]


def _precision(args: list[str]) -> str:
    """The cell's precision, a key of the conformance suite's bounds."""
    backend = args[1]
    mode = args[args.index("--mode") + 1] if "--mode" in args else None
    if "--int4" in args:
        return "int4"
    if mode in ("int8", "dynamic-int8") or (backend == "coreml" and "--int8" in args):
        return "int8"
    half = (
        mode == "fp16"
        or (backend == "coreml" and "float32" not in args)  # an ML program computes in fp16
        or (backend in ("ncnn", "openvino") and "--no-fp16" not in args)  # fp16 by default
    )
    return "fp16" if half else "fp32"


def test_info_takes_the_model_flags(cli, upstream_dir):
    # upstream: `timmx info resnet18 --pretrained`, and its --checkpoint/--num-classes/--in-chans
    result = cli("info", "resnet18", "--checkpoint", CHECKPOINT, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["weights"] == "checkpoint (model.pth)"
    assert info["num_classes"] == 1000 and info["architecture"] == "ResNet"

    result = cli("info", "resnet18", "--num-classes", 7, "--in-chans", 1, "--json")
    assert result.code == 0, result.err
    info = json.loads(result.out)
    assert info["num_classes"] == 7 and info["input_size"][0] == 1
    assert info["weights"] == "random init"

    result = cli("info", "resnet18", "--checkpoint", CHECKPOINT, "--num-classes", 7)
    assert_refused(result, "--num-classes 1000")


@pytest.mark.parametrize(
    "args", [("resnet",), ("resnet*",), ("--pretrained-only", "resnet")], ids=str
)
def test_list_counts_what_it_found(cli, args):
    result = cli("list", *args)
    assert result.code == 0
    names = result.out.split()
    assert "resnet18" in names or "resnet18.a1_in1k" in names
    noun = "model" if len(names) == 1 else "models"
    assert result.err.strip().endswith(f"Found {len(names)} {noun}")


def test_shell_completion(cli):
    assert "--install-completion" in cli("--help").out
    script = Path(sys.executable).with_name("timmx")  # completion is keyed by the program name
    if not script.exists():
        pytest.skip("the timmx console script is not installed beside this Python")
    # as a user types it in bash: the shell is detected from the parent process (`; exit` keeps
    # bash from exec-ing timmx in its place)
    run = subprocess.run(
        ["bash", "-c", f"'{script}' --show-completion; exit $?"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "_timmx_completion" in run.stdout and "_TIMMX_COMPLETE" in run.stdout


def test_doctor_and_help(cli):
    assert cli("doctor").code == 0
    assert cli("--help").code == 0


def test_python_api_examples(upstream_dir):
    """0.10.1's Python API section, with a checkpoint for `pretrained=True`."""
    import timmx

    require_backend("onnx")
    require_backend("litert")
    assert {"onnx", "litert", "executorch", "coreml"} <= set(timmx.backends())
    small = {"checkpoint": CHECKPOINT, "input_size": (3, SIZE, SIZE)}
    path = timmx.export_model("onnx", "resnet18", dynamic_batch=True, **small)
    assert path == Path("resnet18.onnx") and path.exists()
    path = timmx.export_model(
        "litert",
        "resnet18",
        mode="int8",
        calibration_data="./my-images",
        output="r18.tflite",
        **small,
    )
    report = json.loads(Path("r18.tflite.json").read_text())
    assert path.exists() and report["verification"]["status"] == "passed"


# The flags whose numerics upstream defines, checked against references made here.


def _sha(report: dict) -> str:
    return report["artifacts"][0]["sha256"]


def test_mean_std_three_numbers_give_the_comma_form_artifact(cli, upstream_dir):
    common = ("export", "torchscript", "resnet18", "-c", CHECKPOINT, "--input-size", 3, 64, 64)
    spaced = cli(*common, "--normalize", "--mean", 0.5, 0.5, 0.5, "--std", 0.5, 0.5, 0.5,
                 "-o", "a/m.pt")  # fmt: skip
    commas = cli(*common, "--normalize", "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5",
                 "-o", "b/m.pt")  # fmt: skip
    own = cli(*common, "--normalize", "-o", "c/m.pt")
    assert spaced.code == commas.code == own.code == 0, spaced.err + commas.err + own.err
    reports = [spaced.report(upstream_dir / f"{d}/m.pt") for d in "abc"]
    assert reports[0]["job"] == {**reports[1]["job"], "output": "a/m.pt"}
    assert reports[0]["job"]["preprocess"]["mean"] == [0.5, 0.5, 0.5]

    # (TorchScript bytes differ between two exports in one process: its class names are
    # numbered per process. The programs are compared on their outputs instead.)
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(8))
    a, b, c = (torch.jit.load(str(upstream_dir / f"{d}/m.pt"))(x).detach() for d in "abc")
    assert torch.equal(a, b) and not torch.allclose(a, c)
    expected = reference_model("resnet18", upstream_dir / CHECKPOINT)((x - 0.5) / 0.5)
    assert_matches(a, expected.detach())


def test_litert_mean_std_preprocess_the_calibration_images(cli, upstream_dir):
    """Upstream's meaning of --mean/--std without --normalize: the calibration images are
    normalised with them, the graph is not. The same images, preprocessed here with those
    statistics and saved as a tensor, give the very same artifact."""
    require_backend("litert")
    import timm
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from timmx.calibration import image_files

    common = ("export", "litert", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE, SIZE,
              "--mode", "int8")  # fmt: skip
    stats = ("--mean", 0.5, 0.5, 0.5, "--std", 0.5, 0.5, 0.5)
    config = resolve_data_config({}, model=timm.create_model("resnet18"))  # the model's own
    config.update(input_size=(3, SIZE, SIZE), mean=(0.5,) * 3, std=(0.5,) * 3)
    transform = create_transform(**config, is_training=False)
    files = image_files(upstream_dir / "my-images")
    images = [transform(Image.open(p).convert("RGB")) for p in files]
    torch.save(torch.stack(images), upstream_dir / "mine.pt")

    results = [
        cli(*common, "--calibration-data", "./my-images/", *stats, "-o", "a/m.tflite"),
        cli(*common, "--calibration-data", "mine.pt", "-o", "b/m.tflite"),
        cli(*common, "--calibration-data", "./my-images/", "-o", "c/m.tflite"),
    ]
    assert all(r.code == 0 for r in results), [r.err for r in results]
    reports = [results[0].report(upstream_dir / f"{d}/m.tflite") for d in "abc"]
    assert reports[0]["job"]["preprocess"]["normalize"] is False
    assert reports[0]["job"]["options"]["calibration_mean"] == [0.5, 0.5, 0.5]
    assert _sha(reports[0]) == _sha(reports[1]) != _sha(reports[2])


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--mode", "fp16", "--mean", 0.5, 0.5, 0.5), "calibrates nothing"),
        (("--mode", "int8", "--random-calibration", "--std", 0.5, 0.5, 0.5), "reads none"),
        (
            ("--mode", "int8", "--calibration-data", "calibration.pt", "--mean", 0.5, 0.5, 0.5),
            "is a tensor",
        ),
        (
            ("--mode", "int8", "--calibration-data", "my-images", "--mean", 0.5, 0.5),
            "2 values",
        ),
        (("--no-per-channel",), "--mode fp32 has none"),
    ],
)
def test_litert_calibration_flags_refused_where_they_mean_nothing(cli, upstream_dir, flags, needle):
    require_backend("litert")
    result = cli("export", "litert", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE,
                 SIZE, *flags)  # fmt: skip
    assert_refused(result, needle)


def _per_channel_weights(path: Path) -> int:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return sum(
        1
        for t in interpreter.get_tensor_details()
        if t["dtype"] == np.int8 and len(t["quantization_parameters"]["scales"]) > 1
    )


def test_litert_per_channel(cli, upstream_dir):
    require_backend("litert")
    common = ("export", "litert", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE, SIZE,
              "--mode", "int8", "--calibration-data", "calibration.pt")  # fmt: skip
    assert cli(*common, "-o", "pc.tflite").code == 0
    result = cli(*common, "--no-per-channel", "-o", "pt.tflite")
    assert result.code == 0, result.err
    report = result.report(upstream_dir / "pt.tflite")
    assert report["verification"]["status"] == "passed"
    assert report["verification"]["details"]["weight_scales"] == "per tensor"
    assert _per_channel_weights(upstream_dir / "pc.tflite") >= 15
    assert _per_channel_weights(upstream_dir / "pt.tflite") == 0


def test_onnx_external_data_and_check(cli, upstream_dir):
    require_backend("onnx")
    common = ("export", "onnx", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE, SIZE)
    result = cli(*common, "--external-data", "--no-check", "-o", "ext.onnx")
    assert result.code == 0, result.err
    files = {a["path"] for a in result.report(upstream_dir / "ext.onnx")["artifacts"]}
    assert files == {"ext.onnx", "ext.onnx.data"}
    assert (upstream_dir / "ext.onnx").stat().st_size < 1_000_000  # the weights are beside it
    result = cli(*common, "--no-external-data", "--check", "-o", "one.onnx")
    assert result.code == 0, result.err
    assert [a["path"] for a in result.report(upstream_dir / "one.onnx")["artifacts"]] == [
        "one.onnx"
    ]


def test_ncnn_upstream_folder_and_its_loader(cli, upstream_dir, monkeypatch):
    """upstream's `resnet18_ncnn/`: model.ncnn.param/.bin and pnnx's model_ncnn.py, which
    loads them from beside itself, wherever it is run from."""
    require_backend("ncnn")
    result = cli("export", "ncnn", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE, SIZE,
                 "--no-fp16", "--output", "./artifacts/resnet18_ncnn")  # fmt: skip
    assert result.code == 0, result.err
    folder = upstream_dir / "artifacts/resnet18_ncnn"
    assert sorted(p.name for p in folder.iterdir()) == [
        "model.ncnn.bin",
        "model.ncnn.param",
        "model_ncnn.py",
    ]
    monkeypatch.chdir(upstream_dir / "checkpoints")
    loader = runpy.run_path(str(folder / "model_ncnn.py"))
    out = loader["test_inference"]()
    torch.manual_seed(0)  # the loader's own input
    x = torch.rand(1, 3, SIZE, SIZE)
    expected = reference_model("resnet18", upstream_dir / CHECKPOINT)(x).detach()
    # ncnn computes in float16 by default whatever the weights: the loader does not change it
    assert_matches(out.reshape(expected.shape), expected, rel=1e-2)


def test_coreml_int4_is_upstreams_kmeans_palette(cli, upstream_dir):
    """0.10.1's --int4: 4-bit k-means palettization, iOS16; ours per-block is --int4-linear."""
    require_backend("coreml")
    common = ("export", "coreml", "resnet18", "-c", CHECKPOINT, "--input-size", 3, SIZE, SIZE)
    result = cli(*common, "--int4", "-o", "k.mlpackage")
    assert result.code == 0, result.err
    report = result.report(upstream_dir / "k.mlpackage")
    details = report["verification"]["details"]
    assert details["weights"]["compressed"]["constexpr_lut_to_dense(lut4)"] >= 15
    assert details["opset"] == "CoreML6"  # iOS16: no raised target
    assert not any("iOS18" in w for w in report["warnings"])
    palette = cli(*common, "--palettize", 4, "-o", "p.mlpackage")
    assert palette.code == 0, palette.err
    weights = [upstream_dir / f"{n}.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
               for n in "kp"]  # fmt: skip
    assert (
        hashlib.sha256(weights[0].read_bytes()).digest()
        == hashlib.sha256(weights[1].read_bytes()).digest()
    )


def test_coreml_class_labels_is_labels(cli, upstream_dir):
    require_backend("coreml")
    (upstream_dir / "ten.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    ckpt_args = ("--num-classes", 10, "--input-size", 3, SIZE, SIZE, "--softmax")
    result = cli("export", "coreml", "resnet18", *ckpt_args, "--class-labels", "ten.txt",
                 "-o", "c.mlpackage")  # fmt: skip
    assert result.code == 0, result.err
    report = result.report(upstream_dir / "c.mlpackage")
    assert report["job"]["options"]["labels"] == "ten.txt"
    assert report["verification"]["details"]["classifier"]["labels"] == 10


def test_default_outputs_are_named_and_kept_as_upstream_does(cli, upstream_dir):
    from timmx.job_builder import default_output

    name = "hf-hub:timm/resnet50.a1_in1k"
    assert default_output(name, ".onnx") == Path("hf-hub_timm_resnet50.a1_in1k.onnx")
    require_backend("torchscript")
    args = ("export", "torchscript", "resnet18", "--input-size", 3, SIZE, SIZE)
    assert cli(*args).code == 0
    assert_refused(cli(*args), "resnet18.pt already exists", "--output")
    assert cli(*args, "--output", "resnet18.pt").code == 0  # named: replaced


def test_coreml_neuralnetwork_default_is_an_mlmodel(cli, upstream_dir):
    require_backend("coreml")
    result = cli("export", "coreml", "resnet18", "--input-size", 3, SIZE, SIZE,
                 "--convert-to", "neuralnetwork", "--no-verify")  # fmt: skip
    assert result.code == 0, result.err
    assert (upstream_dir / "resnet18.mlmodel").is_file()


# ExecuTorch's flags are parsed and checked without executorch (its image runs the exports).


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (("--delegate", "coreml", "--compute-precision", "float32"),
         {"delegate": "coreml", "compute_precision": "float32"}),
        (("--mode", "dynamic-int8", "--no-per-channel"),
         {"mode": "dynamic-int8", "per_channel": False}),
        (("--delegate", "mlx"), {"delegate": "mlx"}),
        (("--delegate", "coreml", "--mode", "int8", "--random-calibration"),
         {"delegate": "coreml", "mode": "int8"}),
        (("--dynamic-batch", "--batch-size", 2, "--batch-upper-bound", 16),
         {"batch_upper_bound": 16}),
        (("--mode", "int8", "--calibration-data", "my-images", "--mean", 0.5, 0.5, 0.5),
         {"calibration_mean": [0.5, 0.5, 0.5], "calibration_std": None}),
    ],
)  # fmt: skip
def test_executorch_upstream_flags_parse(upstream_dir, flags, options):
    from typer.main import get_command

    from timmx.api import job_and_runner
    from timmx.backends import get_backend
    from timmx.cli.app import app

    group = get_command(app).commands["export"]
    command = group.get_command(None, "executorch")
    argv = ["resnet18", *map(str, flags)]
    ctx = command.make_context("executorch", argv)
    values = {k: v for k, v in ctx.params.items() if k not in ("model_name", "json_out")}
    backend = get_backend("executorch")
    job, _ = job_and_runner(backend, "resnet18", values, verbose=False)  # the CLI's own path
    backend.check(job, backend.parse_options(job.options))
    for key, value in options.items():
        assert job.options[key] == value


def test_the_executorch_cells_run_elsewhere_are_readme_cells():
    assert set(EXECUTORCH_RUN_ELSEWHERE) <= {cell[1] for cell in EXECUTORCH_CELLS}


@pytest.mark.parametrize("cell", [pytest.param(c, id=_id(c)) for c in EXECUTORCH_CELLS])
def test_every_executorch_readme_cell_parses(upstream_dir, cell):
    """Each ExecuTorch command of upstream's README, as run here, becomes a job that the backend
    accepts (its options parsed and checked) without Docker; the image runs them elsewhere."""
    from typer.main import get_command

    from timmx.api import job_and_runner
    from timmx.backends import get_backend
    from timmx.cli.app import app

    args = rewrite(cell[1])
    command = get_command(app).commands["export"].get_command(None, "executorch")
    ctx = command.make_context("executorch", args[2:])
    values = {k: v for k, v in ctx.params.items() if k not in ("model_name", "json_out")}
    backend = get_backend("executorch")
    job, _ = job_and_runner(backend, args[2], values, verbose=False)  # the CLI's own path
    backend.check(job, backend.parse_options(job.options))
    assert Path(job.output).name == artifact_of(args).name


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--compute-precision", "float32"), "--delegate coreml"),
        (("--mode", "dynamic-int8", "--delegate", "coreml"), "xnnpack"),
        (("--mode", "dynamic-int8", "--dynamic-batch", "-b", 2), "--dynamic-batch"),
        (("--delegate", "mlx", "--mode", "int8", "--random-calibration"), "xnnpack or coreml"),
        (("--delegate", "mlx", "--dynamic-batch", "-b", 2), "--dynamic-batch"),
        (("--batch-upper-bound", 16), "needs --dynamic-batch"),
        (("--dynamic-batch", "-b", 4, "--batch-upper-bound", 2), "below --batch-size"),
        (("--no-per-channel",), "--mode fp32 has none"),
        (("--mean", 0.5, 0.5, 0.5), "calibrates nothing"),
    ],
)
def test_executorch_upstream_flags_refused(cli, upstream_dir, flags, needle):
    result = cli("export", "executorch", "resnet18", "--input-size", 3, SIZE, SIZE, *flags)
    assert_refused(result, needle)
