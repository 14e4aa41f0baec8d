"""`timmx build --ray`: every job a Ray task, its files by content, a lost node survived.

Each test runs its own cluster of in-process nodes on this machine (`ray.cluster_utils.Cluster`,
which owns its processes and stops them); the build joins it as a Ray driver would from another
machine, by address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.builds import CHECKPOINTS, build_file, check_two_target_build, write_project
from tests.conftest import require
from tests.test_errors import assert_refused

require("ray", "pip install 'timmx[ray]'")

from ray.cluster_utils import Cluster  # noqa: E402

BUILD = build_file()
MODELS = CHECKPOINTS
# Ends a run only if it hangs: far above any build here, never a measure of one.
HANG_GUARD_S = 1200
NODE = {"num_cpus": 1, "object_store_memory": 200 * 1024**2}


@pytest.fixture
def project(workdir, make_checkpoint) -> Path:
    return write_project(workdir, make_checkpoint, BUILD)


@contextmanager
def cluster(monkeypatch, head_cpus: int, workers: int) -> Iterator[tuple[Cluster, list]]:
    """A head and `workers` worker nodes, 1 CPU each (the head `head_cpus`); not joined here:
    the build joins it by address, as from another machine. Its files (Ray's session, the
    tasks' workspaces, those a killed node leaves) go to a short-named folder of its own
    (a socket path must stay under 108 bytes), removed afterwards."""
    temp = tempfile.mkdtemp(prefix="tx-ray-")
    monkeypatch.setenv("TMPDIR", temp)  # the nodes' processes inherit it
    head = {**NODE, "num_cpus": head_cpus, "include_dashboard": False}
    try:
        nodes = Cluster(initialize_head=True, connect=False, head_node_args=head)
        try:
            added = [nodes.add_node(**NODE) for _ in range(workers)]
            yield nodes, added
        finally:
            nodes.shutdown()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def check_artifacts(root: Path) -> None:
    check_two_target_build(root, dict.fromkeys(MODELS, (32, 32)))


def test_build_on_a_two_node_cluster(cli, project, make_checkpoint, monkeypatch):
    with cluster(monkeypatch, head_cpus=1, workers=1) as (nodes, _):
        result = cli("build", "--ray", nodes.address)
        assert result.code == 0, result.err + result.out
        check_artifacts(project)
        again = cli("build", "--ray", nodes.address)
        assert again.code == 0 and again.out.count("cached") == 4, again.out

        # A job that cannot be done fails on its node with its own one-line reason.
        wrong = make_checkpoint("resnet18")  # 1000 classes, the build says 10
        (project / "ckpt/resnet18.pth").write_bytes(wrong.read_bytes())
        failed = cli("build", "--ray", nodes.address)
    assert failed.code == 2
    assert "2 of 4 jobs failed" in failed.err and "resnet18/onnx" in failed.err
    assert "num-classes" in failed.out and "Ray" not in failed.out, failed.out
    jobs = json.loads((project / "dist/timmx-build.json").read_text())["jobs"]
    assert sorted(jobs) == ["mobilenetv3_small_100/onnx", "mobilenetv3_small_100/torch-export"]
    assert not list((project / "dist").rglob(".*"))


def running_timmx_task(node) -> bool:
    """Whether a Ray worker of `node` is running a timmx task now (its process title)."""
    raylet = node.all_processes["raylet"][0].process.pid
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
    todo = list(children.get(raylet, []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::timmx"):
            return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds tasks through /proc")
def test_a_node_lost_mid_build_is_survived(cli, project, monkeypatch):
    monkeypatch.setenv("TIMMX_CACHE_DIR", str(project.parent / "timmx-cache"))  # Ray's log file
    with cluster(monkeypatch, head_cpus=0, workers=2) as (nodes, workers):
        answer = {}
        build = threading.Thread(
            target=lambda: answer.update(result=cli("build", "--ray", nodes.address))
        )
        build.start()
        victim = None
        while victim is None and build.is_alive():  # until a task runs (or the build ends)
            victim = next((node for node in workers if running_timmx_task(node)), None)
            time.sleep(0.2)
        assert victim is not None, "no timmx task was seen running on a worker node"
        nodes.remove_node(victim, allow_graceful=False)  # a lost machine: no goodbye
        build.join(timeout=HANG_GUARD_S)  # the build ends, either way; only a hang meets this
        assert not build.is_alive(), "the build hung after losing a node"
    result = answer["result"]
    assert result.code == 0, result.err + result.out
    check_artifacts(project)
    # One line for the lost node (issue 24), none of Ray's own log lines or colours.
    said = result.err + result.out
    lost = [line for line in said.splitlines() if "lost:" in line]
    assert len(lost) == 1 and "retried on other nodes" in lost[0], said
    assert "[state-dump]" not in said and "\x1b[" not in said, said


def test_an_unreachable_address_is_one_line_in_seconds(cli, project):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # A hang (ray.init retrying for minutes) ends the run at the timeout and fails the test;
    # the time it takes is benchmarks' business, not an assertion here.
    done = subprocess.run(
        [sys.executable, "-m", "timmx", "build", "--ray", f"127.0.0.1:{port}"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "cannot reach the Ray cluster" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert_refused(cli("build", "--ray", "nowhere"), "--ray takes")
    assert not [p for p in project.rglob("*") if p.suffix in (".onnx", ".pt2")]


def test_ray_not_installed_says_how_to_install(cli, project, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as when not installed
    assert_refused(cli("build", "--ray", "127.0.0.1:6379"), "install timmx[ray]")


def test_a_task_needs_only_its_payloads(project, make_checkpoint, tmp_path):
    """The task, called here as a node would: an input outside the build folder (an absolute
    path) travels by content under the task's own workspace, and what comes back is every
    file of the artifact, as the result lists it."""
    from timmx.build.cache import toolchain_identity
    from timmx.build.ray_runner import run_job
    from timmx.build.run import load_build
    from timmx.contract import ExportResult
    from timmx.runners.accept import accept_bytes
    from timmx.runners.remote import pack, read_input
    from timmx.runners.spec import LocalSpec

    outside = make_checkpoint("mobilenetv3_small_100", num_classes=10).resolve()
    text = BUILD.replace('"ckpt/mnv3.pth"', json.dumps(str(outside)))
    (project / "timmx.toml").write_text(text)
    planned = next(
        job.planned
        for job in load_build(project / "timmx.toml").jobs
        if job.planned.id == "mobilenetv3_small_100/onnx"
    )
    shipment = pack(planned.job, LocalSpec(write_report=False), toolchain_identity("onnx", False))
    spec = shipment.spec
    assert shipment.inputs == [str(outside)]
    assert spec["inputs"] == [f"_inputs/0/{outside.name}"]
    assert spec["job"]["model"]["checkpoint"] == f"_inputs/0/{outside.name}"
    assert spec["job"]["output"] == planned.job.output  # inside the folder: as written
    answer = run_job(spec, read_input(outside))
    result = ExportResult.model_validate_json(answer["result"])
    assert sorted(answer["files"]) == ["mobilenetv3_small_100.onnx"]
    assert not (project / "dist").exists()  # nothing written here: it all came back as bytes
    # The host accepts the bytes as it would from the cluster: checked, then published.
    landed = tmp_path / "host" / "mobilenetv3_small_100.onnx"
    landed.parent.mkdir()
    accept_bytes(result, planned.job, answer["files"], landed, "fix")
    assert landed.read_bytes() == answer["files"]["mobilenetv3_small_100.onnx"]

    # A node with another torch than this host's (which the cache key holds) refuses the job.
    spec["toolchain"] = re.sub(r"torch=[^,]+", "torch=0.0.1", spec["toolchain"])
    refused = run_job(spec, read_input(outside))["error"]
    assert refused["kind"] == "invalid_input"
    assert "torch 0.0.1 here" in refused["message"], refused["message"]
    assert "install the same versions on every node" in refused["message"]
