"""What the user sees (issue 24): random weights named, library errors in whole sentences, and
`list`/`info` answered from the model index without importing torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_errors import _RunsCode, assert_refused
from timmx import errors

SMALL = ("--input-size", 3, 32, 32)


def test_random_weights_are_named_and_a_checkpoint_export_is_not(cli, workdir, make_checkpoint):
    random = cli("export", "onnx", "resnet18", *SMALL, "-o", "random.onnx")
    assert random.code == 0, random.err
    warnings = random.report(workdir / "random.onnx")["warnings"]
    said = [w for w in warnings if w.startswith("random weights")]
    assert len(said) == 1, warnings
    assert "--pretrained" in said[0] and "--checkpoint" in said[0]
    assert "random weights" in random.out  # the terminal summary's warning row

    ckpt = make_checkpoint("resnet18")
    trained = cli("export", "onnx", "resnet18", "-c", ckpt, *SMALL, "-o", "trained.onnx")
    assert trained.code == 0, trained.err
    assert not any("random" in w for w in trained.report(workdir / "trained.onnx")["warnings"])
    assert "random weights" not in trained.out


# --- no library error cut mid-word -------------------------------------------------------------


@pytest.fixture
def excerpts(monkeypatch):
    """Every (library text, what the message kept of it) that `first_line` made during a test,
    from every timmx module that imported it."""
    made: list[tuple[str, str]] = []
    original = errors.first_line

    def recording(exc: BaseException, limit: int = 200) -> str:
        kept = original(exc, limit)
        made.append((str(exc), kept))
        return kept

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "") or ""
        if name.startswith("timmx") and getattr(module, "first_line", None) is original:
            monkeypatch.setattr(module, "first_line", recording)
    return made


def _refusals(workdir: Path, make_checkpoint) -> list[tuple[list, str]]:
    """Refusals the suite triggers (tests/test_errors.py and others) whose line carries a
    library's text, and the issue's own: an unsafe pickle given as timm's checkpoint_path."""
    data = make_checkpoint("resnet18").read_bytes()
    (workdir / "cut.pth").write_bytes(data[: len(data) // 2])
    (workdir / "notes.txt").write_text("these are not weights\n" * 20)
    torch.save({"state_dict": _RunsCode()}, workdir / "evil.pth")
    (workdir / "calib.pt").write_text("not a tensor file " * 50)
    return [
        (["-c", "cut.pth"], "truncated"),
        (["-c", "notes.txt"], "not a PyTorch checkpoint"),
        (["--model-kwarg", "checkpoint_path=evil.pth"], "system"),
        (["--model-kwarg", "drop_rate=oops"], "resnet18"),
    ]


def test_no_refusal_is_cut_mid_word(cli, workdir, make_checkpoint, excerpts):
    for flags, needle in _refusals(workdir, make_checkpoint):
        result = cli("export", "onnx", "resnet18", *SMALL, *flags)
        assert_refused(result, needle)
    # The case: the whole refusal, naming what the pickle would import and the fix.
    line = cli("export", "onnx", "resnet18", *SMALL, "--model-kwarg", "checkpoint_path=evil.pth")
    assert "would import" in line.err and line.err.strip().endswith(".safetensors")
    assert excerpts, "no refusal above quoted a library's error"
    for full, kept in excerpts:
        first = next((ln.strip() for ln in full.splitlines() if ln.strip()), kept)
        body = kept.removesuffix("...")
        assert first.startswith(body), (full, kept)
        rest = first[len(body) :]
        assert not rest or not rest[0].isalnum(), f"cut mid-word: {kept!r} of {first!r}"


def test_long_library_text_ends_at_a_sentence_or_a_word():
    text = (
        "Weights only load failed. This file can still be loaded, to do so you have two "
        "options, do those steps only if you trust the source of the checkpoint. (1) In "
        "PyTorch 2.6, we changed the default value of the weights_only argument in torch.load "
        "from False to True. Re-running torch.load with weights_only set to False will likely "
        "succeed, but it can result in arbitrary code execution. If this checkpoint is trusted, "
        "retry with weights_only=False."
    )
    assert errors.first_line(RuntimeError(text)) == (
        "Weights only load failed. This file can still be loaded, to do so you have two options, "
        "do those steps only if you trust the source of the checkpoint"
    )
    one_sentence = "word " * 60
    cut = errors.first_line(ValueError(one_sentence), 42)
    assert cut.endswith("...") and len(cut) <= 45 and cut.removesuffix("...").endswith("word")


# --- list and info from the model index ---------------------------------------------------------


def _timmx(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TIMMX_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "timmx", *args], capture_output=True, text=True, env=env
    )


def _imports_torch(*args: str, cache: Path) -> bool:
    """Whether `timmx ARGS` imported torch (`python -X importtime` names every import)."""
    env = {**os.environ, "TIMMX_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "timmx", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return any(line.rstrip().endswith("| torch") for line in done.stderr.splitlines())


def test_list_and_info_answer_from_the_index_without_torch(tmp_path):
    import timm

    cache = tmp_path / "cache"
    first = _timmx("list", "vit_*", cache=cache)  # builds the index
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == timm.list_models("vit_*")
    assert [p.name for p in cache.iterdir()] == [f"models-timm-{timm.__version__}.json"]

    assert not _imports_torch("list", "vit_*", cache=cache)
    again = _timmx("list", "resnet1", "--pretrained-only", cache=cache)
    assert again.stdout.split() == timm.list_models("*resnet1*", pretrained=True)
    assert "Found" in again.stderr

    info = _timmx("info", "resnet18", "--json", cache=cache)  # creates the model once
    assert info.returncode == 0, info.stderr
    assert not _imports_torch("info", "resnet18", "--json", cache=cache)
    cached = _timmx("info", "resnet18", "--json", cache=cache)
    assert json.loads(cached.stdout) == json.loads(info.stdout)
    assert json.loads(info.stdout)["parameters"] == sum(
        p.numel() for p in timm.create_model("resnet18").parameters()
    )
    # Flags that change the model are answered by creating it, never from the cache.
    ten = _timmx("info", "resnet18", "--num-classes", "10", "--json", cache=cache)
    assert json.loads(ten.stdout)["num_classes"] == 10


# --- a quantized refusal names what passes --------------------------------------------------


def _calibration_file(path: Path, count: int, size: int) -> None:
    """Smooth random images, normalised with ImageNet's mean/std (benchmarks/quantized.py's)."""
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(123)
    coarse = torch.rand(count, 3, 8, 8, generator=generator)
    pixels = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    pixels = (pixels + 0.1 * torch.randn(count, 3, size, size, generator=generator)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.save((pixels - mean) / std, path)


def test_a_static_int8_refusal_names_an_alternative_that_passes(cli, workdir):
    # mobilenetv3_small_050 at 64x64 fails static int8 as mobilenetv3_large_100 does at 224
    # (benchmarks/results/quantized_refusals.md), at a test's cost.
    # The weights as that benchmark makes them (seed 123, then norms randomised).
    import timm

    from tests.conftest import randomize_norms

    name, size = "mobilenetv3_small_050", ("--input-size", 3, 64, 64)
    torch.manual_seed(123)
    model = timm.create_model(name)
    randomize_norms(model)
    ckpt = workdir / "m.pth"
    torch.save(model.state_dict(), ckpt)
    _calibration_file(workdir / "calib.pt", 96, 64)
    refused = cli(
        "export", "onnx", name, "-c", ckpt, *size, "--mode", "int8",
        "--calibration-data", "calib.pt", "--calibration-samples", 48, "-o", "q.onnx",
    )  # fmt: skip
    assert_refused(refused, "verification failed", "int8 loses too much on this model")
    line = refused.err.strip()
    assert "--mode fp16" in line and line.index("--mode fp16") < line.index("--atol")
    assert not (workdir / "q.onnx").exists()

    alternative = cli("export", "onnx", name, "-c", ckpt, *size, "--mode", "fp16", "-o", "h.onnx")
    assert alternative.code == 0, alternative.err
    assert alternative.report(workdir / "h.onnx")["verification"]["status"] == "passed"


# --- --isolated auto ----------------------------------------------------------------------------


def test_isolated_takes_auto_and_upstreams_bare_switch():
    from timmx.cli.export import isolated_values

    assert isolated_values(["m", "--isolated"]) == ["m", "--isolated=true"]
    assert isolated_values(["--isolated", "auto", "m"]) == ["--isolated=auto", "m"]
    assert isolated_values(["--isolated", "m"]) == ["--isolated=true", "m"]  # m: the model
    assert isolated_values(["--", "--isolated"]) == ["--", "--isolated"]


def test_isolated_auto_stays_in_this_process_where_the_packages_import(
    cli, workdir, make_checkpoint, monkeypatch
):
    monkeypatch.setenv("TIMMX_ISOLATED", "auto")
    ckpt = make_checkpoint("resnet18")
    result = cli("export", "onnx", "resnet18", "-c", ckpt, *SMALL, "-o", "m.onnx")
    assert result.code == 0, result.err
    assert result.report(workdir / "m.onnx")["environment"]["runner"] == "local"
    assert "--isolated auto" not in result.err

    monkeypatch.setenv("TIMMX_ISOLATED", "sometimes")
    assert_refused(cli("export", "onnx", "resnet18", *SMALL), "TIMMX_ISOLATED", "auto")


# --- other programs' logs kept in a file --------------------------------------------------------


def test_a_containers_stderr_goes_to_a_log_file_named_in_one_line(tmp_path, monkeypatch):
    from timmx.runners.docker import keep_log

    monkeypatch.setenv("TIMMX_CACHE_DIR", str(tmp_path))
    said: list[str] = []
    assert keep_log([], tmp_path / "m.tflite", said.append) is None and said == []
    lines = ["WARNING: All log messages before absl::InitializeLog() is called", "INFO: XNNPACK"]
    path = keep_log(lines, tmp_path / "m.tflite", said.append)
    assert path is not None and path.parent == tmp_path / "logs"
    assert path.read_text().splitlines() == lines
    assert len(said) == 1 and str(path) in said[0] and "2 lines" in said[0]


RAY_LIKE = """
import os, sys, threading
from pathlib import Path
from timmx.build.ray_cluster import ray_logs_kept, say
with ray_logs_kept(Path(sys.argv[1])) as kept:
    os.write(2, b"[state-dump] from C++, on file descriptor 2\\n")
    thread = threading.Thread(
        target=lambda: print("\\x1b[33m(raylet)\\x1b[0m from Ray's thread", file=sys.stderr),
        name="ray_listen_error_messages",
    )
    thread.start()
    thread.join()
    say("Ray node 10.0.0.2 (abcdef01) lost: 2 jobs retried on other nodes")
    with kept.everything():
        print("(raylet) held back until shutdown", file=sys.stderr)
    say(f"log: {kept.path()}")
print("after the build", file=sys.stderr)
"""


def test_rays_log_lines_go_to_a_file_and_the_builds_own_to_the_terminal(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", RAY_LIKE, str(tmp_path / "logs")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0].startswith("Ray node 10.0.0.2 (abcdef01) lost: 2 jobs")
    assert "raylet" not in done.stderr and "state-dump" not in done.stderr
    assert done.stderr.splitlines()[-1] == "after the build"
    (log,) = (tmp_path / "logs").iterdir()
    assert f"log: {log}" in done.stderr
    assert log.read_text().splitlines() == [
        "[state-dump] from C++, on file descriptor 2",
        "(raylet) from Ray's thread",  # without its colours
        "(raylet) held back until shutdown",
    ]


def test_a_containers_stderr_is_bounded_and_keeps_its_last_lines():
    from timmx.runners.docker import _collect

    class Container:
        def logs(self, **kwargs):
            assert kwargs.get("stdout") is False
            return iter([b"".join(b"line %d\n" % i for i in range(100))])

    lines: list[str] = []
    _collect(Container(), lines, limit=10)
    assert lines == [
        *(f"line {i}" for i in range(5)),
        "... (90 lines left out)",
        *(f"line {i}" for i in range(95, 100)),
    ]
