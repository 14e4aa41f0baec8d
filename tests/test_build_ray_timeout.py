"""`timmx build --ray`: the build file's `timeout` stops an in-process task that runs past it."""

from __future__ import annotations

from tests.test_build_liveness import BUILD
from tests.test_build_ray import cluster  # skips this module where ray is not installed
from timmx.build.ray_runner import run_on_ray
from timmx.build.run import load_build
from timmx.time_limit import timed_out_message


def test_a_ray_task_past_its_timeout_is_stopped_and_the_next_runs(
    workdir, make_checkpoint, monkeypatch
):
    (workdir / "ckpt").mkdir()
    checkpoint = make_checkpoint("resnet18", num_classes=10)
    (workdir / "ckpt/resnet18.pth").write_bytes(checkpoint.read_bytes())
    # convnext_base at 224 x 224 takes far longer than 1 s to build and export anywhere.
    slow = '[[models]]\nname = "convnext_base"\ninput-size = [3, 224, 224]\ntimeout = 1\n\n'
    (workdir / "timmx.toml").write_text(BUILD.replace("[[models]]", slow + "[[models]]", 1))
    build = load_build(workdir / "timmx.toml")
    shown: list[tuple[str, str]] = []
    with cluster(monkeypatch, head_cpus=1, workers=0) as (nodes, _):
        outcomes = run_on_ray(
            nodes.address,
            build.root,
            [job.planned for job in build.jobs],
            1,  # one at a time: the second waits for the first to be stopped
            True,
            lambda planned: None,
            lambda planned, message: shown.append((planned.id, message)),
            lambda outcome: None,
        )
    by_id = {o.planned.id: o for o in outcomes}
    assert list(by_id) == ["convnext_base/onnx", "resnet18/onnx"]
    stopped = by_id["convnext_base/onnx"].error
    assert stopped is not None and stopped.message == timed_out_message("onnx", 1)
    assert ("convnext_base/onnx", "running on the Ray cluster") in shown  # counted from there
    assert by_id["resnet18/onnx"].error is None, by_id["resnet18/onnx"].error
    assert (workdir / "dist/resnet18/onnx/resnet18.onnx").is_file()
    assert [p for p in (workdir / "dist").rglob("*") if "convnext" in str(p) and p.is_file()] == []
