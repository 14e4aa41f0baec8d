"""`timmx bench` on a real model: test_resnet trained on scikit-learn's digits (held-out top-1
>= 90%), exported to fp32 and int8 onnx, LiteRT and OpenVINO, and benched on the held-out
images. The test computes eager's and onnxruntime's accuracy itself and must get the bench's
figures exactly; broken conversions of the good checkpoint must show a large drop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.bench_digits import (
    CLASSES,
    HELD_OUT,
    MODEL,
    Digits,
    digits_fixture,  # noqa: F401 - the trained model
    export_artifacts,
    load_folder,
)
from tests.conftest import reference_model, require_backend

GOOD_NAMES = [
    "digits.onnx",
    "digits-int8.onnx",
    "digits-int8.tflite",
    "digits.xml",
    "digits-int8.xml",
]
RUNS = {"warmup": 1, "runs": 5}  # timings are not what these tests check


@pytest.fixture(scope="module")
def artifacts(digits: Digits) -> dict[str, Path]:
    for backend in ("onnx", "litert", "openvino"):
        require_backend(backend)
    paths = export_artifacts(digits.checkpoint.parent, GOOD_NAMES)
    paths.update(_broken(digits))
    return paths


def _broken(digits: Digits) -> dict[str, Path]:
    """Two bad conversions of the good checkpoint: int8 calibrated on one blank image (it
    passes verification, which runs on that image), and the fp32 ONNX file with the classifier's
    rows shuffled in the file (its report copied beside it)."""
    import onnx
    from onnx import numpy_helper
    from PIL import Image

    from timmx import export

    root = digits.checkpoint.parent
    (root / "blank" / "x").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "blank" / "x" / "blank.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        export(
            "onnx",
            MODEL,
            checkpoint="digits.pth",
            num_classes=CLASSES,
            input_size=(3, 32, 32),
            mode="int8",
            calibration_data="blank",
            verify=False,
            output="out/blank-int8.onnx",
        )
    model = onnx.load(root / "out" / "digits.onnx")
    order = np.roll(np.arange(CLASSES), 1)  # every class's row moves
    for tensor in model.graph.initializer:
        if tensor.name in ("model.fc.weight", "model.fc.bias"):
            values = numpy_helper.to_array(tensor)[order]
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    shuffled = root / "out" / "shuffled.onnx"
    onnx.save(model, shuffled)
    report = json.loads((root / "out" / "digits.onnx.json").read_text())
    report["job"]["output"] = "out/shuffled.onnx"
    report["artifacts"][0]["path"] = "shuffled.onnx"
    (root / "out" / "shuffled.onnx.json").write_text(json.dumps(report))
    return {"blank-int8.onnx": root / "out" / "blank-int8.onnx", "shuffled.onnx": shuffled}


@pytest.fixture(scope="module")
def benched(digits: Digits, artifacts: dict[str, Path]):
    import timmx

    return timmx.bench(list(artifacts.values()), data=digits.test, threads=1, **RUNS)


def _rows(report) -> dict[str, object]:
    return {Path(row.artifact).name: row for row in report.rows}


def test_the_model_learned_the_digits(digits: Digits) -> None:
    assert digits.accuracy >= 0.9


def test_eager_and_onnxruntime_figures_are_exactly_our_own(digits, artifacts, benched) -> None:
    import onnxruntime as ort
    import torch

    x, y = load_folder(digits.test)  # our own loop and preprocessing
    model = reference_model(MODEL, digits.checkpoint, num_classes=CLASSES)
    with torch.inference_mode():
        eager = model(x).argmax(-1).numpy()
    session = ort.InferenceSession(str(artifacts["digits.onnx"]))
    name = session.get_inputs()[0].name
    onnx_pred = np.array([session.run(None, {name: s[None].numpy()})[0].argmax() for s in x])
    labels = y.numpy()
    rows = _rows(benched)
    assert benched.images == HELD_OUT == len(labels)
    assert benched.classes == [str(i) for i in range(CLASSES)]
    for row in rows.values():  # eager is the job's own model and checkpoint, for every row
        assert row.eager_top1 == int((eager == labels).sum()) / len(labels)
    fp32 = rows["digits.onnx"]
    assert fp32.top1 == int((onnx_pred == labels).sum()) / len(labels)
    assert fp32.disagreement == float(np.mean(onnx_pred != eager))
    assert fp32.bytes == artifacts["digits.onnx"].stat().st_size


def test_good_artifacts_keep_the_accuracy(benched) -> None:
    rows = _rows(benched)
    for name in GOOD_NAMES:
        row = rows[name]
        assert row.top1 >= 0.9, name
        assert row.top1 - row.eager_top1 == pytest.approx(row.top1_delta)
        assert row.top1_delta >= -0.03, name
        low, high = row.top1_delta_ci95
        assert low <= row.top1_delta <= high, name
        assert row.top5 >= row.top1
        assert row.latency_ms_p50 is not None and 0 < row.latency_ms_p50 <= row.latency_ms_p90
        assert row.threads == 1 and row.load_s > 0 and row.bytes > 0
    # Baked normalisation and softmax are not applied twice: the IR agrees with eager.
    assert rows["digits.xml"].disagreement <= 0.01
    assert rows["digits-int8.tflite"].mode == "int8"


def test_broken_conversions_show_a_large_drop(benched) -> None:
    rows = _rows(benched)
    for name, least in (("blank-int8.onnx", 0.05), ("shuffled.onnx", 0.5)):
        row = rows[name]
        assert row.top1_delta <= -least, (name, row.top1_delta)
        assert row.top1_delta_ci95[1] < 0, name  # not noise: the whole interval is a drop
        assert row.disagreement >= least, name


def test_cli_writes_json_markdown_and_html(cli, digits, artifacts, tmp_path) -> None:
    names = ["digits.onnx", "digits-int8.tflite", "shuffled.onnx"]
    out = tmp_path / "report"
    out.mkdir()
    result = cli(
        "bench",
        *(artifacts[n] for n in names),
        "--data",
        digits.test,
        "--limit",
        "120",
        "--sort",
        "latency",
        "--runs",
        "5",
        "--warmup",
        "1",
        "--json",
        out / "bench.json",
        "--markdown",
        out / "bench.md",
        "--html",
        out / "bench.html",
    )
    assert result.code == 0, result.err
    from timmx.bench.model import BenchReport

    report = BenchReport.model_validate_json((out / "bench.json").read_text())
    assert report.images == 120 and report.limit == 120
    assert sorted(Path(r.artifact).name for r in report.rows) == sorted(names)
    latencies = [r.latency_ms_p50 for r in report.rows]
    assert latencies == sorted(latencies)
    data = json.loads((out / "bench.json").read_text())
    for key in ("artifact", "backend", "top1", "top5", "eager_top1", "top1_delta"):
        assert key in data["rows"][0]
    assert "bootstrap" in data["interval"]
    markdown = (out / "bench.md").read_text()
    assert markdown.count("\n| `") == 3
    html = (out / "bench.html").read_text()
    assert html.count("<circle") >= 3 and "eager" in html
    assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "top-1" in result.out and "eager top-1 " in result.out


def test_limit_is_a_fixed_seeded_subset(digits) -> None:
    from timmx.bench.data import scan

    first = scan(digits.test, 50, 0, None)
    assert first.files == scan(digits.test, 50, 0, None).files
    assert first.files != scan(digits.test, 50, 1, None).files
    assert len(first.files) == 50 and len(set(first.files)) == 50


def test_schema_bench(cli) -> None:
    result = cli("schema", "bench")
    assert result.code == 0
    schema = json.loads(result.out)
    assert "rows" in schema["properties"] and "top1_delta_ci95" in json.dumps(schema)


def test_bad_inputs_are_one_line_and_write_nothing(cli, digits, artifacts, tmp_path) -> None:
    written = tmp_path / "out.json"
    onnx_file = artifacts["digits.onnx"]
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(onnx_file.read_bytes())
    # A copy whose report names a checkpoint that is gone.
    gone = tmp_path / "gone"
    gone.mkdir()
    shutil.copy(onnx_file, gone / "m.onnx")
    report = json.loads(onnx_file.with_name("digits.onnx.json").read_text())
    report["job"]["output"] = "m.onnx"
    (gone / "m.onnx.json").write_text(json.dumps(report))
    cases = [
        ((onnx_file, "--data", tmp_path / "nowhere"), "is not a folder"),
        ((lonely, "--data", digits.test), "has no report beside it"),
        ((gone / "m.onnx", "--data", digits.test), "checkpoint"),
        ((onnx_file, "--data", digits.test, "--sort", "colour"), "--sort"),
        ((onnx_file, "--data", digits.test, "--limit", "0"), "--limit"),
        ((onnx_file, "--data", digits.test, "--threads", "0"), "--threads"),
    ]
    for args, words in cases:
        result = cli("bench", *args, "--json", written)
        assert result.code == 2, (args, result.err)
        assert words in result.err and len(result.err.strip().splitlines()) == 1, result.err
        assert "Traceback" not in result.err
        assert not written.exists()


def test_a_missing_runtime_needs_an_engine_to_bench_in_its_image(
    cli, digits, artifacts, monkeypatch, tmp_path
) -> None:
    """An artifact whose runtime is not installed here is benched in its image: with no engine
    answering, one line says so before anything is written."""
    from timmx.backends import get_backend

    monkeypatch.setattr(
        type(get_backend("litert")), "missing_packages", lambda _: ["ai-edge-litert"]
    )
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    written = tmp_path / "out.json"
    names = ("digits.onnx", "digits-int8.tflite")
    result = cli("bench", *(artifacts[n] for n in names), "-d", digits.test, "--json", written)
    assert result.code == 2
    assert "without --isolated" in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and not written.exists()
    assert "Traceback" not in result.err
