"""Toolchain variants in the build file (issue 22), without Docker: the plan, `--toolchain`, the
refusals (in-process, missing or stale lock, a pin outside its backend's range) and
`timmx images lock` resolving real hashed locks with uv."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.test_errors import assert_refused
from timmx.toolchains import forget_variants, in_range

BUILD = """
[toolchains.ort-prod]
from = "onnx"
pins = {{ onnxruntime = "{version}" }}

[defaults]
input-size = [3, 32, 32]
num-classes = 10

[[models]]
name = "resnet18"

[[targets]]
backend = "onnx"

[[targets]]
backend = "onnx"
name = "onnx-prod"
toolchain = "ort-prod"
{extra}
"""

LOCK = """# The ort-prod toolchain (hand-made for a test)
# from: onnx
# pins: onnxruntime=={version}
onnxruntime=={version}
"""


@pytest.fixture(autouse=True)
def _no_variants_left():
    yield
    forget_variants()


def project(root: Path, version: str = "1.22.1", extra: str = "", lock: str | None = None):
    (root / "timmx.toml").write_text(BUILD.format(version=version, extra=extra))
    if lock is not None:
        (root / "timmx-locks").mkdir(exist_ok=True)
        (root / "timmx-locks/ort-prod.lock").write_text(LOCK.format(version=lock))
    return root


def plan(root: Path):
    from timmx.build.run import load_build

    return {job.planned.id: job for job in load_build(root / "timmx.toml").jobs}


def test_two_toolchains_of_one_backend_build_side_by_side(workdir):
    jobs = plan(project(workdir, lock="1.22.1"))
    builtin, variant = jobs["resnet18/onnx"].planned, jobs["resnet18/onnx-prod"].planned
    assert (builtin.toolchain, builtin.isolated) == ("onnx", False)
    assert (variant.toolchain, variant.isolated) == ("ort-prod", True)
    assert variant.job.output == "dist/resnet18/onnx-prod/resnet18.onnx"
    assert builtin.job.output == "dist/resnet18/onnx/resnet18.onnx"
    assert jobs["resnet18/onnx"].key != jobs["resnet18/onnx-prod"].key


def test_a_changed_lock_changes_the_variant_jobs_key_alone(workdir):
    root = project(workdir, lock="1.22.1")
    before = {i: job.key for i, job in plan(root).items()}
    lock = root / "timmx-locks/ort-prod.lock"
    lock.write_text(lock.read_text() + "coloredlogs==15.0.1\n")
    after = {i: job.key for i, job in plan(root).items()}
    assert after["resnet18/onnx"] == before["resnet18/onnx"]
    assert after["resnet18/onnx-prod"] != before["resnet18/onnx-prod"]


def test_a_variant_in_process_is_refused(cli, workdir):
    project(workdir, extra="isolated = false", lock="1.22.1")
    assert_refused(cli("build", "--dry-run"), "onnx-prod", "runs isolated", "isolated = false")


def test_a_missing_lock_is_refused_naming_the_command(cli, workdir):
    project(workdir)
    assert_refused(
        cli("build", "--dry-run"), "'ort-prod' has no lock", "timmx images lock ort-prod"
    )


def test_a_lock_older_than_its_pins_is_refused(cli, workdir):
    project(workdir, version="1.22.0", lock="1.22.1")
    assert_refused(
        cli("build", "--dry-run"),
        "older than its pins",
        "onnxruntime==1.22.0",
        "timmx images lock ort-prod",
    )


def test_a_pin_outside_the_backends_range_is_refused(cli, workdir):
    project(workdir, version="1.16.3", lock="1.16.3")
    assert_refused(cli("build", "--dry-run"), "onnxruntime==1.16.3", "onnxruntime>=1.19")
    assert_refused(cli("images", "lock", "ort-prod"), "onnxruntime>=1.19", "pin a version")


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        ('toolchain = "nope"', ("toolchain 'nope'", "[toolchains.nope]")),
        ("", ()),
    ],
)
def test_a_target_names_a_declared_variant_of_its_backend(cli, workdir, extra, needles):
    root = project(workdir, lock="1.22.1")
    text = (root / "timmx.toml").read_text()
    if extra:
        (root / "timmx.toml").write_text(text.replace('toolchain = "ort-prod"', extra))
        assert_refused(cli("build", "--dry-run"), *needles)
    else:  # a variant of onnx on an ncnn target
        (root / "timmx.toml").write_text(
            text.replace('backend = "onnx"\nname', 'backend = "ncnn"\nname')
        )
        assert_refused(cli("build", "--dry-run"), "varies the onnx toolchain", "ncnn")


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('[toolchains.onnx]\nfrom = "onnx"', "built-in toolchain"),
        ('[toolchains.x]\nfrom = "tensorrt"', "not a built-in toolchain"),
        ('[toolchains.x]\nfrom = "onnx"\npins = { onnxruntime = ">=1.2" }', "exact version"),
        ('[toolchains.x]\nfrom = "onnx"\nwhat = 1', "unknown key"),
    ],
)
def test_bad_variants_are_refused(cli, workdir, table, needle):
    (workdir / "timmx.toml").write_text(
        table + '\n[[models]]\nname = "resnet18"\n[[targets]]\nbackend = "onnx"\n'
    )
    assert_refused(cli("build", "--dry-run"), needle)


def test_export_toolchain_is_checked_before_anything_runs(cli, workdir):
    args = ("export", "onnx", "resnet18", "--input-size", 3, 32, 32, "--num-classes", 10)
    assert_refused(cli(*args, "--toolchain", "ort-prod"), "no timmx.toml")
    project(workdir)
    assert_refused(cli(*args, "--toolchain", "ort-prod"), "timmx images lock ort-prod")
    assert_refused(cli(*args, "--toolchain", "nope"), "no [toolchains.nope]", "ort-prod")
    ncnn = ("export", "ncnn", "resnet18", "--input-size", 3, 32, 32)
    assert_refused(cli(*ncnn, "--toolchain", "ort-prod"), "varies the onnx toolchain")
    assert not (workdir / "resnet18.onnx").exists()


def test_a_ray_task_brings_its_variant_and_the_node_checks_the_image(workdir):
    """A Ray node has no build file: the job brings its variant (pins and locks, as JSON), and
    the node, knowing it for the task alone, names the image the host would; a lock that differs
    on the way is refused before anything runs."""
    from timmx.build.cache import variant_identity
    from timmx.build.ray_runner import run_job
    from timmx.runners.remote import pack, read_input
    from timmx.runners.spec import DockerSpec
    from timmx.toolchains import registered, ship_variant, shipped_variant

    planned = plan(project(workdir, lock="1.22.1"))["resnet18/onnx-prod"].planned
    here = variant_identity(planned)
    shipped = json.loads(json.dumps(ship_variant(registered("ort-prod"))))  # across the wire
    forget_variants()  # the node's side
    with shipped_variant(shipped):
        known = registered("ort-prod")
        assert known is not None and known.root != workdir and variant_identity(planned) == here
    assert registered("ort-prod") is None and not known.root.exists()  # its own folder only
    assert (workdir / "timmx-locks/ort-prod.lock").is_file()  # the user's lock stays

    shipped["locks"]["ort-prod.lock"] += "coloredlogs==15.0.1\n"
    shipment = pack(planned.job, DockerSpec(toolchain="ort-prod"), here, shipped)
    answer = run_job(shipment.spec, *(read_input(workdir / p) for p in shipment.inputs))
    assert answer["error"]["kind"] == "invalid_input"
    assert "another ort-prod toolchain than this host" in answer["error"]["message"]
    assert registered("ort-prod") is None


def test_version_ranges():
    assert in_range("1.22.1", ">=1.22")
    assert in_range("2.0", ">=1.22,<3")
    assert not in_range("1.21.9", ">=1.22")
    assert not in_range("3.0.0", ">=1.22,<3")
    assert in_range("1.0.0b3", ">=1.0.0b3")


def test_every_backend_declares_parseable_ranges():
    from timmx.backends import all_backends

    for backend in all_backends():
        for requirement in backend.supported:
            _name, spec = re.match(r"([A-Za-z0-9._-]+)(.*)", requirement).groups()
            assert spec.startswith((">=", "<", ">")), requirement
            # a floor takes every newer release; a ceiling (tfjs's setuptools<82) every older one
            bound = spec.split(",")[0]
            edge = "0" if bound.startswith("<") else "99999999999"
            assert in_range(edge, bound), requirement


def _uv() -> None:
    from timmx.images.lock import uv_binary

    try:
        uv_binary()
    except Exception as exc:
        unavailable(f"uv is not installed ({exc}): pip install uv")


def test_lock_resolves_a_variant_with_hashes_and_upgrade_keeps_the_pins(cli, workdir):
    _uv()
    from timmx.images.lock import read_pins

    project(workdir)
    result = cli("images", "lock", "ort-prod")
    assert result.code == 0, result.err
    lock = workdir / "timmx-locks/ort-prod.lock"
    pinned = {p.name: p for p in read_pins(lock)}
    assert pinned["onnxruntime"].version == "1.22.1"
    assert all(p.hashes and all(h.startswith("sha256:") for h in p.hashes) for p in pinned.values())
    # onnxruntime 1.22 needs coloredlogs, which the built-in onnx toolchain's lock lacks
    assert "coloredlogs" in pinned
    # what the shared torch and timm layers install is theirs, not the variant's
    assert not {"torch", "numpy", "timm", "sympy"} & set(pinned)
    # the built-in toolchain's versions are kept where they fit
    assert pinned["onnx"].version == _builtin_pin("onnx", "onnx")
    first = lock.read_text()
    assert cli("images", "lock", "ort-prod").code == 0
    assert lock.read_text() == first  # nothing moves that need not
    plan(workdir)  # and the build now accepts it


def test_lock_refreshes_a_builtin_lock_with_hashes(cli, workdir, monkeypatch):
    _uv()
    from timmx.images.lock import read_pins
    from timmx.images.recipes import recipes_root

    images = workdir / "images"
    shutil.copytree(recipes_root(), images)
    monkeypatch.setenv("TIMMX_IMAGES_DIR", str(images))
    before = {p.name: p.version for p in read_pins(images / "ncnn/requirements.lock")}
    assert cli("images", "lock", "ncnn").code == 0
    after = read_pins(images / "ncnn/requirements.lock")
    assert {p.name: p.version for p in after} == before
    assert all(p.hashes for p in after)
    assert (images / "ncnn/requirements.lock").read_text().startswith("# The ncnn toolchain")


def test_lock_hashes_a_torch_layer_as_pypis_wheels(cli, workdir, monkeypatch):
    """executorch's own torch layer: the same versions, now each with PyPI's hashes, the CUDA
    wheels in the constraints; pip takes both files with --require-hashes from PyPI."""
    _uv()
    from timmx.images.lock import read_pins
    from timmx.images.recipes import recipes_root

    images = workdir / "images"
    shutil.copytree(recipes_root(), images)
    monkeypatch.setenv("TIMMX_IMAGES_DIR", str(images))
    files = [images / "executorch" / n for n in ("torch.lock", "torch.constraints")]
    before = [{p.name: p.version for p in read_pins(f)} for f in files]
    assert cli("images", "lock", "executorch").code == 0
    after = [read_pins(f) for f in files]
    assert [{p.name: p.version for p in pins} for pins in after] == before
    assert all(p.hashes for pins in after for p in pins)
    assert {p.name for p in after[0]} >= {"torch", "torchvision"}
    assert all(p.name.startswith(("nvidia-", "cuda-", "triton")) for p in after[1])


def test_the_build_args_choose_hashes_by_the_torch_source(tmp_path):
    from timmx.images.identity import BuildSettings

    def hashes(**settings) -> str:
        return BuildSettings.resolve(**settings).build_args()["TORCH_HASHES"]

    assert hashes(torch_index_url="https://pypi.org/simple/") == "1"
    assert hashes(torch_index_url="") == "1"  # pip's own index
    assert hashes(torch_index_url="https://download.pytorch.org/whl/cpu") == ""
    assert hashes(torch_index_url="", torch_wheels=tmp_path) == ""


def _builtin_pin(toolchain: str, package: str) -> str:
    from timmx.images.lock import read_pins
    from timmx.images.recipes import get_recipe

    path = get_recipe(toolchain).folder / "requirements.lock"
    return next(p.version for p in read_pins(path) if p.name == package)


def test_a_variant_that_pins_torch_shares_a_builtin_torch_layer(cli, workdir):
    """ai-edge-litert 2.2 needs litert-torch 0.9.4, so a torch below 2.14: executorch's pair.
    The variant takes executorch's torch lock files byte for byte (one torch layer for both
    images) and installs over it what it pins otherwise."""
    _uv()
    from timmx.images.lock import read_pins
    from timmx.images.recipes import get_recipe

    (workdir / "timmx.toml").write_text(
        '[toolchains.litert-2-2]\nfrom = "litert"\n'
        'pins = { ai-edge-litert = "2.2.0", torch = "2.13.0" }\n'
        '[[models]]\nname = "resnet18"\n[[targets]]\nbackend = "litert"\n'
        'toolchain = "litert-2-2"\n'
    )
    result = cli("images", "lock", "litert-2-2")
    assert result.code == 0, result.err
    locks = workdir / "timmx-locks"
    executorch = get_recipe("executorch").files
    assert (locks / "litert-2-2.torch.lock").read_bytes() == executorch["torch.lock"].read_bytes()
    assert (locks / "litert-2-2.torch.constraints").read_bytes() == (
        executorch["torch.constraints"].read_bytes()
    )
    pinned = {p.name: p.version for p in read_pins(locks / "litert-2-2.lock")}
    assert pinned["ai-edge-litert"] == "2.2.0" and pinned["litert-torch"] == "0.9.4"
    assert pinned["typing-extensions"] == "4.12.2"  # litert's xdsl needs it below 4.13
    assert "torch" not in pinned


@pytest.mark.parametrize("reachable", [False, True])
def test_make_setup_probes_the_torch_index(tmp_path, reachable):
    """`make setup` takes the pair from the PyTorch CPU index when it answers, else from PyPI in
    one line (no extra index, so no pages of pip retries). A fake pip records its arguments."""
    import http.server
    import subprocess
    import threading
    from functools import partial

    for tool in ("make", "curl"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    pip = venv / "bin/pip"
    pip.write_text('#!/bin/sh\necho "pip $*"\n')
    pip.chmod(0o755)
    files = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.HTTPServer(("127.0.0.1", 0), files)
    (tmp_path / "whl/cpu/torch").mkdir(parents=True)
    index = f"http://127.0.0.1:{server.server_address[1]}/whl/cpu"
    if reachable:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    else:
        server.server_close()  # nothing listens there
    overrides = ("PYTHON=true", f"TORCH_CPU_INDEX={index}")
    # A TORCH_INDEX_URL of the caller's (.ci/run sets one, maybe empty) skips the probe.
    environment = {k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"}
    try:
        done = subprocess.run(
            [*("make", "-C", str(Path(__file__).parents[1]), "setup", f"VENV={venv}"), *overrides],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=environment,
        )
    finally:
        if reachable:
            server.shutdown()
    assert done.returncode == 0, done.stderr
    torch_line = next(
        line
        for line in done.stdout.splitlines()
        if line.startswith("pip install -q") and "torch==" in line
    )
    if reachable:
        assert f"--extra-index-url {index}" in torch_line
    else:
        assert "--extra-index-url" not in torch_line
        assert "out of reach: torch and torchvision from PyPI" in done.stdout
