"""The isolated mode's pieces that need no Docker engine: identity, recipes, staging, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from timmx.contract import SCHEMA_VERSION, ExportJob, ModelSpec
from timmx.errors import CheckpointError, ContractError
from timmx.images.base import debian_mirror
from timmx.images.identity import BuildSettings, identify
from timmx.images.recipes import all_recipes, get_recipe, load_recipe
from timmx.images.source import source_hash, write_wheel
from timmx.runners.accept import accept_folder
from timmx.runners.container_job import stage_job
from timmx.runners.container_result import read_result
from timmx.runners.docker import DockerRunner

REPO = Path(__file__).resolve().parents[2]


def test_every_backend_has_a_recipe():
    from timmx.backends import all_backends

    names = {r.name for r in all_recipes()}
    assert {"onnx", "torch"} <= names
    for backend in all_backends():
        assert backend.toolchain in names, f"{backend.name}: no images/{backend.toolchain}/"


def test_torch_recipes_share_one_dockerfile_and_locks():
    """One Dockerfile, and the shared torch and timm locks unless a recipe pins its own torch:
    the engine's cache then shares the torch layers between toolchain images."""
    shared = REPO / "images" / "_shared"
    recipes = all_recipes()
    assert {r.files["Dockerfile"] for r in recipes} == {shared / "Dockerfile"}
    assert all(r.files["timm.lock"] == shared / "timm.lock" for r in recipes)
    own_torch = {r.name for r in recipes if r.files["torch.lock"] != shared / "torch.lock"}
    # executorch links torch 2.13; rknn-toolkit2 requires torch<=2.4
    assert own_torch == {"executorch", "rknn"}
    assert len(recipes) - len(own_torch) >= 2
    # what is not a Python package comes from a recipe's setup.sh, in the same Dockerfile
    own_setup = {r.name for r in recipes if r.files["setup.sh"] != shared / "setup.sh"}
    assert own_setup == {"rknn", "tfjs"}  # OpenCV's libGL; Node.js and TF.js


def test_locks_pin_exact_versions():
    for recipe in all_recipes():
        for name, path in recipe.lock_files.items():
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                assert not line or ("==" in line and not any(c in line for c in "<>~*")), (
                    f"{recipe.name}/{name}: {line!r} is not an exact pin"
                )


def test_tag_derives_from_inputs(tmp_path: Path):
    shutil.copytree(REPO / "images", tmp_path / "images")
    recipe = load_recipe(tmp_path / "images" / "onnx")
    settings = BuildSettings()
    first = identify(recipe, settings)
    assert identify(load_recipe(tmp_path / "images" / "onnx"), settings) == first
    assert first.ref == f"timmx-onnx:{first.tag}"

    other_args = identify(recipe, BuildSettings(base_image="timmx-base:bookworm"))
    assert other_args.tag != first.tag and other_args.content_hash == first.content_hash

    assert identify(recipe, settings, source="another source").tag != first.tag
    prefixed = identify(recipe, BuildSettings(registry="ghcr.io/team"))
    assert prefixed.ref == f"ghcr.io/team/timmx-onnx:{first.tag}"

    lock = tmp_path / "images" / "onnx" / "requirements.lock"
    lock.write_text(lock.read_text().replace("onnx==1.23.2", "onnx==1.23.1"))
    changed = identify(load_recipe(tmp_path / "images" / "onnx"), settings)
    assert changed.tag != first.tag and changed.lock_hash != first.lock_hash


def test_settings_from_flags_then_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("TIMMX_BASE_IMAGE", "base:env")
    monkeypatch.setenv("TIMMX_TORCH_INDEX_URL", "https://example.invalid/simple")
    monkeypatch.delenv("TIMMX_TORCH_WHEELS", raising=False)
    monkeypatch.delenv("TIMMX_REGISTRY", raising=False)
    settings = BuildSettings.resolve()
    assert settings.base_image == "base:env"
    assert settings.torch_index_url == "https://example.invalid/simple"
    assert BuildSettings.resolve(base_image="base:flag").base_image == "base:flag"
    monkeypatch.delenv("TIMMX_TORCH_INDEX_URL")
    wheels = BuildSettings.resolve(torch_wheels=tmp_path)
    assert wheels.torch_index_url == "" and wheels.torch_wheels == tmp_path


def test_wheel_is_reproducible(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_wheel(tmp_path / "a"), write_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    names = zipfile.ZipFile(first).namelist()
    assert "timmx/worker.py" in names and not any("__pycache__" in n for n in names)
    assert len(source_hash()) == 64


def test_debian_mirror_from_apt_sources(tmp_path: Path):
    apt = tmp_path / "etc" / "apt" / "sources.list.d"
    apt.mkdir(parents=True)
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (apt / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "etc" / "apt" / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://old.example/debian"


def _job(**model) -> ExportJob:
    return ExportJob(backend="onnx", model=ModelSpec(name="resnet18", **model), output="o/m.onnx")


def test_staging_rewrites_paths_under_job(tmp_path: Path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.pth").write_bytes(b"x")
    job = _job(checkpoint="ckpt/w.pth")
    staging = tmp_path / "staging"
    staging.mkdir()
    mounts = stage_job(job, tmp_path, staging, "m.onnx")
    written = json.loads((staging / "job.json").read_text())
    assert written["output"] == "out/m.onnx"
    assert written["model"]["checkpoint"] == "in/checkpoint/w.pth"
    assert mounts.binds == [
        ((tmp_path / "ckpt" / "w.pth").resolve(), "/job/in/checkpoint/w.pth", True)
    ]
    assert (staging / "out").is_dir() and (staging / "out").stat().st_uid == os.getuid()
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        stage_job(_job(checkpoint="missing.pth"), tmp_path, tmp_path / "s2", "m.onnx")


def test_container_options_are_hardened(tmp_path: Path):
    from timmx.runners.container_job import Mounts

    runner = DockerRunner(memory="3g", timeout_s=60, pids_limit=256)
    options = runner.container_options("img:tag", Mounts(job=_job()), tmp_path)
    assert options["user"] == f"{os.getuid()}:{os.getgid()}"
    assert options["network_mode"] == "none"
    assert options["read_only"] is True
    assert options["cap_drop"] == ["ALL"]
    assert options["security_opt"] == ["no-new-privileges"]
    assert options["mem_limit"] == "3g" and options["pids_limit"] == 256
    assert "/tmp" in options["tmpfs"] and options["environment"]["HOME"] == "/tmp"
    modes = {m["Target"]: m["ReadOnly"] for m in options["mounts"]}
    assert modes == {"/job/job.json": True, "/job/out": False}


def test_result_of_another_schema_version_names_both(tmp_path: Path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "status": "success"}))
    with pytest.raises(ContractError) as caught:
        read_result(path)
    assert f"{SCHEMA_VERSION + 1}" in caught.value.message
    assert f"version {SCHEMA_VERSION}" in caught.value.message
    assert read_result(tmp_path / "none.json") is None


def test_artifacts_must_stay_in_the_output_folder(tmp_path: Path):
    from timmx.contract import ArtifactFile, ExportResult, Verification

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "secret").write_text("x")
    result = ExportResult(
        status="success",
        artifacts=[ArtifactFile(path="../secret", bytes=1, sha256="0")],
        verification=Verification(status="passed"),
    )
    job = ExportJob(backend="onnx", model=ModelSpec(name="resnet18"), output="pub/secret")
    with pytest.raises(ContractError, match="not a plain path in its output folder"):
        accept_folder(result, job, out, tmp_path / "pub" / "secret", "fix")
    assert not (tmp_path / "pub").exists()


def test_unreachable_engine_is_one_line(tmp_path: Path):
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no.sock"}
    done = subprocess.run(
        [sys.executable, "-m", "timmx", "export", "onnx", "resnet18", "--isolated"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "systemctl start docker" in lines[0] and "--isolated" in lines[0]
    assert not list(tmp_path.iterdir())


def test_cli_start_imports_no_docker_sdk():
    code = "import sys; from timmx.cli.app import app; print('docker' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_get_recipe_names_the_choices():
    from timmx.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="choose one of"):
        get_recipe("nope")


def test_unchosen_settings_follow_the_last_build(monkeypatch):
    for name in ("BASE_IMAGE", "TORCH_INDEX_URL", "TORCH_WHEELS", "REGISTRY"):
        monkeypatch.delenv(f"TIMMX_{name}", raising=False)
    earlier = BuildSettings(base_image="timmx-base:bookworm", torch_index_url="https://i/simple")
    labels = earlier.labels()
    assert BuildSettings.resolve().follow(labels).build_args() == earlier.build_args()
    mixed = BuildSettings.resolve(base_image="other:base").follow(labels)
    assert mixed.base_image == "other:base" and mixed.torch_index_url == "https://i/simple"
    assert BuildSettings.resolve().follow({}) == BuildSettings.resolve()


def test_an_artifact_that_differs_from_the_workers_record_is_refused(tmp_path: Path):
    """The worker says what it wrote; the host believes the files only when they agree."""
    from timmx.contract import ExportResult, Verification
    from timmx.publish import describe_files

    out = tmp_path / "out"
    (out / "m.ncnn").mkdir(parents=True)
    (out / "m.ncnn" / "m.param").write_text("param")
    (out / "m.ncnn" / "m.bin").write_bytes(b"weights")
    honest = describe_files([out / "m.ncnn"], out)
    job = ExportJob(backend="ncnn", model=ModelSpec(name="resnet18"), output="pub/m.ncnn")
    published = tmp_path / "pub" / "m.ncnn"
    published.parent.mkdir()

    def accept(result: ExportResult) -> None:
        result.verification = Verification(status="passed")
        accept_folder(result, job, out, published, "fix")

    accept(ExportResult(status="success", artifacts=honest))
    assert sorted(p.name for p in published.iterdir()) == ["m.bin", "m.param"]
    shutil.rmtree(published)
    for changed in (
        {"sha256": "0" * 64},
        {"bytes": honest[0].bytes + 1},
    ):
        record = [honest[0].model_copy(update=changed), *honest[1:]]
        result = ExportResult(status="success", artifacts=record)
        with pytest.raises(ContractError, match="differs from the worker's record"):
            accept(result)
    # a member the worker did not name is not published unrecorded
    (out / "m.ncnn" / "extra.txt").write_text("x")
    result = ExportResult(status="success", artifacts=honest)
    with pytest.raises(ContractError, match=r"extra\.txt"):
        accept(result)
    assert not published.exists()
