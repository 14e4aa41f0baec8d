"""Images by digest: `timmx images push` to a real registry on localhost (Debian's
`docker-registry`, started here), pulling back by digest, the manifest's image records and
`timmx build --locked`.

Pushing a 6 GB toolchain image takes minutes, so the registry round trip runs on a small image
(the base image with a label of its own); the locked build runs a real export in the recorded
toolchain image, present here by its id."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import assert_matches, reference_model
from tests.isolated.helpers import RUN_LABEL, TIMMX, owner_pid, spawn
from tests.test_export_onnx import run_onnx
from tests.test_image_trust import locked_project

pytestmark = pytest.mark.isolated


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path) -> Iterator[str]:
    """A registry on 127.0.0.1 (the engine trusts a local one without TLS); its address."""
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's docker-registry (scripts/docker-setup.sh installs it)")
        pytest.skip("no docker-registry binary (apt-get install docker-registry)")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'store'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, "the registry did not start"
                if time.monotonic() > deadline:  # a hang guard, not a timing
                    pytest.fail("the registry did not answer")
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def small_image(docker_client) -> Iterator[str]:
    """An image of its own (the base image plus labels: a timmx image of a `base` toolchain, as
    `--locked` runs only timmx images): no layer to upload but the base's."""
    import io

    from timmx import __version__

    tag = f"timmx-test-small:{uuid.uuid4().hex[:8]}"
    base = os.environ.get("TIMMX_BASE_IMAGE", "timmx-base:bookworm")
    labels = f"ai.timmx.test={tag} ai.timmx.toolchain=base"
    labels += f' org.opencontainers.image.version="{__version__}"'
    dockerfile = f"FROM {base}\nLABEL {labels}\n".encode()
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    try:
        yield tag
    finally:
        if _has(docker_client, image.id):
            docker_client.images.remove(image.id, force=True)


def _has(client, image_id: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(image_id)
        return True
    except ImageNotFound:
        return False


def _timmx(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIMMX, *args], cwd=cwd, capture_output=True, text=True, timeout=900, env=env
    )


def test_push_then_pull_by_digest(tmp_path, docker_client, registry, small_image):
    from timmx.images.registry import DigestLookup, Pin, pin_image

    env = {**os.environ, "TIMMX_BASE_IMAGE": small_image}
    done = _timmx("images", "push", "base", "--registry", f"{registry}/team", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    digest = json.loads(done.stdout)["base"]
    name = small_image.split(":")[0]
    assert digest.startswith(f"{registry}/team/{name}@sha256:")
    image_id = docker_client.images.get(small_image).id
    assert digest in docker_client.images.get(image_id).attrs["RepoDigests"]
    assert DigestLookup()(image_id) == digest  # what a build's manifest records for the image

    # gone from this engine: only the registry has it now
    for ref in docker_client.images.get(image_id).tags:
        docker_client.images.remove(ref)
    assert not _has(docker_client, image_id)
    pin = Pin(image_id, digest, "base")
    found = pin_image(docker_client, pin, f"{registry}/team")
    assert found.how == "pulled" and found.id == image_id
    assert pin_image(docker_client, pin, f"{registry}/team").how == "present"


def test_a_digest_of_another_image_is_refused(docker_client, registry, small_image):
    from timmx.errors import DockerError
    from timmx.images.registry import Pin, pin_image, push_image

    team = f"{registry}/team"
    digest = push_image(docker_client, small_image, team)
    with pytest.raises(DockerError, match="the manifest and the registry disagree"):
        pin_image(docker_client, Pin("sha256:" + "0" * 64, digest, "base"), team)
    missing = Pin("sha256:" + "0" * 64, f"{team}/none@sha256:" + "1" * 64, "base")
    with pytest.raises(DockerError, match="cannot pull the recorded image"):
        pin_image(docker_client, missing, team)


BUILD = """[defaults]
input-size = [3, 64, 64]
isolated = true

[[models]]
name = "resnet18"
checkpoint = "ckpt/resnet18.pth"

[[targets]]
backend = "onnx"
"""


def test_locked_build_runs_in_the_recorded_image(
    tmp_path, docker_client, images, make_checkpoint, no_leftovers
):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/resnet18.pth").write_bytes(make_checkpoint("resnet18").read_bytes())
    (tmp_path / "timmx.toml").write_text(BUILD)
    assert _timmx("build", cwd=tmp_path).returncode == 0
    manifest_path = tmp_path / "dist/timmx-build.json"
    recorded = json.loads(manifest_path.read_text())["jobs"]["resnet18/onnx"]
    assert recorded["image_id"].startswith("sha256:")
    assert recorded["image_digest"] is None  # never pushed: this image has no digest

    # Another timmx would build another image: --locked keeps to the recorded one.
    artifact = tmp_path / "dist/resnet18/onnx/resnet18.onnx"
    artifact.unlink()
    env = {**os.environ, "TIMMX_TORCH_INDEX_URL": "https://example.invalid/simple"}
    done = _timmx("build", "--locked", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(artifact.with_name("resnet18.onnx.json").read_text())
    assert report["environment"]["image_id"] == recorded["image_id"]
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    expected = reference_model("resnet18", tmp_path / "ckpt/resnet18.pth")(x).detach().numpy()
    assert_matches(run_onnx(artifact, x.numpy()), expected)

    # a recorded image that is neither here nor in a registry: one line, nothing runs
    manifest = json.loads(manifest_path.read_text())
    manifest["jobs"]["resnet18/onnx"]["image_id"] = "sha256:" + "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    artifact.unlink()
    done = _timmx("build", "--locked", cwd=tmp_path)
    assert done.returncode == 2
    assert "never in a registry" in done.stderr and "Traceback" not in done.stderr
    assert not artifact.exists()

    # a job the manifest does not know: refused before anything runs
    manifest_path.unlink()
    done = _timmx("build", "--locked", cwd=tmp_path)
    assert done.returncode == 2 and "records no image for resnet18/onnx" in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr


def _locked_build_refused(docker_client, project: Path, env: dict, *needles: str) -> None:
    """`timmx build --locked` exits 2 with one line naming `needles`, and starts no container."""
    since = int(time.time()) - 1
    proc = spawn(["build", "--locked"], project, env=env)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(needle in errors[0] for needle in needles), errors[0]
    events = docker_client.api.events(
        since=since,
        until=int(time.time()) + 1,
        filters={"event": "create", "label": RUN_LABEL},
        decode=True,
    )
    assert [e for e in events if owner_pid(e["Actor"]["Attributes"]) == proc.pid] == []
    assert not (project / "dist/resnet18").exists()


def test_locked_build_runs_no_foreign_image(tmp_path, docker_client, small_image):
    """A pull request that edits the manifest to name another image (to run it with the
    network and HF_TOKEN for a pretrained job): refused before any container starts."""
    env = {**os.environ, "HF_TOKEN": "hf_secret", "TIMMX_REGISTRY": "registry.example.com/team"}
    base = os.environ.get("TIMMX_BASE_IMAGE", "timmx-base:bookworm")
    locked_project(tmp_path, docker_client.images.get(base).id)  # no toolchain label
    _locked_build_refused(docker_client, tmp_path, env, "not a timmx toolchain image")

    locked_project(tmp_path, docker_client.images.get(small_image).id)  # a timmx image, not onnx's
    _locked_build_refused(docker_client, tmp_path, env, "not the onnx toolchain's")

    # an image of another registry, by digest: never pulled
    elsewhere = "ghcr.io/someone/timmx-onnx@sha256:" + "1" * 64
    locked_project(tmp_path, "sha256:" + "0" * 64, elsewhere)
    _locked_build_refused(docker_client, tmp_path, env, "not in the configured registry")
    del env["TIMMX_REGISTRY"]
    _locked_build_refused(docker_client, tmp_path, env, "no registry is configured")
