"""`timmx build --locked` runs only timmx toolchain images, pulled only from the registry the user
configured, and nothing with the network runs another image: a manifest edited in a pull request
cannot make timmx run its image with HF_TOKEN. The engine here is a fake that records what
would run; tests/isolated/test_isolated_registry.py does the same against a real engine."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.test_errors import assert_refused
from timmx import __version__
from timmx.errors import DockerError, InvalidInputError
from timmx.images.identity import LABEL_TOOLCHAIN, LABEL_VERSION
from timmx.images.registry import Pin, check_pins, pin_image

REGISTRY = "registry.example.com/team"
ONNX_ID = "sha256:" + "a" * 64
DIGEST = f"{REGISTRY}/timmx-onnx@sha256:" + "b" * 64
TIMMX_LABELS = {LABEL_TOOLCHAIN: "onnx", LABEL_VERSION: __version__}


class FakeImage:
    def __init__(self, image_id: str, labels: dict[str, str], digests: tuple[str, ...] = ()):
        self.id = image_id
        self.labels = labels
        self.tags = [f"timmx-test:{image_id[7:15]}"]
        self.attrs = {"RepoDigests": list(digests)}


class FakeImages:
    def __init__(self, *present: FakeImage, registry: dict[str, FakeImage] | None = None):
        self.present = {image.id: image for image in present}
        self.registry = registry or {}  # digest -> the image a pull of it gives
        self.pulled: list[str] = []

    def get(self, ref: str) -> FakeImage:
        from docker.errors import ImageNotFound

        for image in self.present.values():
            if ref in (image.id, *image.tags, *image.attrs["RepoDigests"]):
                return image
        raise ImageNotFound(ref)

    def pull(self, ref: str) -> FakeImage:
        self.pulled.append(ref)
        image = self.registry[ref]
        self.present[image.id] = image
        return image


class FakeContainers:
    """Records each container asked for, and refuses it: nothing here may start one."""

    def __init__(self) -> None:
        self.created: list[dict] = []

    def create(self, **options):
        from docker.errors import APIError

        self.created.append(options)
        raise APIError("the fake engine starts nothing")

    def list(self, **_):
        return []


class FakeClient:
    def __init__(self, images: FakeImages) -> None:
        self.images = images
        self.containers = FakeContainers()
        self.api = SimpleNamespace(base_url="http+docker://localhost", timeout=60)

    def close(self) -> None:
        pass


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch):
    """Install a fake engine as the one timmx connects to; returns a function that sets it."""
    holder: dict[str, FakeClient] = {}

    def install(client: FakeClient) -> FakeClient:
        holder["client"] = client
        return client

    monkeypatch.setattr("timmx.images.engine.connect", lambda *_, **__: holder["client"])
    monkeypatch.delenv("TIMMX_REGISTRY", raising=False)
    return install


FOREIGN = [
    pytest.param({}, "not a timmx toolchain image", id="alpine"),
    pytest.param(
        {LABEL_TOOLCHAIN: "torch", LABEL_VERSION: __version__},
        "the torch toolchain's image, not the onnx toolchain's",
        id="another-toolchain",
    ),
    pytest.param(
        {LABEL_TOOLCHAIN: "onnx", LABEL_VERSION: "0.0.1-evil"},
        f"built by timmx 0.0.1-evil, not {__version__}",
        id="another-timmx",
    ),
    pytest.param({LABEL_TOOLCHAIN: "onnx"}, "of an unknown version", id="no-version"),
]


@pytest.mark.parametrize(("labels", "needle"), FOREIGN)
def test_a_recorded_image_of_another_kind_is_refused_before_it_runs(engine, labels, needle):
    client = engine(FakeClient(FakeImages(FakeImage(ONNX_ID, labels))))
    pin = Pin(ONNX_ID, None, "onnx")
    with pytest.raises(InvalidInputError, match="will not run") as refused:
        check_pins([pin], None)
    assert needle in refused.value.message and "\n" not in refused.value.message
    with pytest.raises(InvalidInputError, match="will not run"):
        pin_image(client, pin, None)  # where the build would start it
    assert client.containers.created == [] and client.images.pulled == []


def test_a_timmx_image_of_the_jobs_toolchain_runs(engine):
    client = engine(FakeClient(FakeImages(FakeImage(ONNX_ID, TIMMX_LABELS, (DIGEST,)))))
    pin = Pin(ONNX_ID, DIGEST, "onnx")
    check_pins([pin], None)  # present: its digest is not pulled, so no registry is needed
    found = pin_image(client, pin, None)
    assert (found.id, found.ref, found.how) == (ONNX_ID, DIGEST, "present")
    # a digest that is not the image's names nothing here: it runs by its tag instead
    found = pin_image(client, Pin(ONNX_ID, "evil.example/x@sha256:" + "c" * 64, "onnx"), None)
    assert found.ref == client.images.present[ONNX_ID].tags[0]


@pytest.mark.parametrize(
    ("digest", "registry", "needle"),
    [
        ("evil.example/team/timmx-onnx@sha256:" + "b" * 64, REGISTRY, "not in the configured"),
        (f"{REGISTRY}evil/timmx-onnx@sha256:" + "b" * 64, REGISTRY, "not in the configured"),
        (DIGEST, None, "no registry is configured"),
        (f"{REGISTRY}/timmx-onnx:latest", REGISTRY, "not a digest reference"),
    ],
    ids=["another-registry", "a-lookalike-prefix", "none-configured", "a-tag"],
)
def test_a_digest_outside_the_configured_registry_is_not_pulled(engine, digest, registry, needle):
    image = FakeImage(ONNX_ID, TIMMX_LABELS)
    client = engine(FakeClient(FakeImages(registry={digest: image})))
    pin = Pin(ONNX_ID, digest, "onnx")
    with pytest.raises(InvalidInputError, match="will not be pulled") as refused:
        check_pins([pin], registry)
    assert needle in refused.value.message
    with pytest.raises(InvalidInputError, match=needle):
        pin_image(client, pin, registry)
    assert client.images.pulled == [] and client.containers.created == []


def test_a_pulled_image_is_checked_before_it_runs(engine):
    foreign = FakeImage(ONNX_ID, {})  # the registry's image under the recorded id: no labels
    client = engine(FakeClient(FakeImages(registry={DIGEST: foreign})))
    pin = Pin(ONNX_ID, DIGEST, "onnx")
    check_pins([pin], REGISTRY)  # not here: only its digest can be checked up front
    with pytest.raises(DockerError, match="not a timmx toolchain image"):
        pin_image(client, pin, REGISTRY)
    assert client.images.pulled == [DIGEST] and client.containers.created == []

    client.images.registry[DIGEST] = FakeImage(ONNX_ID, TIMMX_LABELS)
    del client.images.present[ONNX_ID]
    assert pin_image(client, pin, REGISTRY).how == "pulled"


def test_the_weights_fetch_runs_only_a_timmx_image():
    from timmx.runners.docker import fetch_weights

    limits = SimpleNamespace(memory="1g", timeout_s=60, pids_limit=64)
    alpine = FakeImage("sha256:" + "d" * 64, {})
    client = FakeClient(FakeImages(alpine))
    with pytest.raises(DockerError, match="will not run with the network") as refused:
        fetch_weights(client, alpine.tags[0], "resnet18", limits, lambda _: None)
    assert "\n" not in refused.value.message
    assert client.containers.created == []

    # a timmx image runs by its id: a tag moved meanwhile cannot swap it
    onnx = FakeImage(ONNX_ID, TIMMX_LABELS)
    client = FakeClient(FakeImages(onnx))
    with pytest.raises(DockerError, match="cannot create the fetch container"):
        fetch_weights(client, onnx.tags[0], "resnet18", limits, lambda _: None)
    assert [options["image"] for options in client.containers.created] == [ONNX_ID]
    assert client.containers.created[0]["network_mode"] == "bridge"


BUILD = """[defaults]
input-size = [3, 32, 32]
isolated = true

[[models]]
name = "resnet18"
pretrained = true

[[targets]]
backend = "onnx"
"""


def locked_project(folder: Path, image_id: str, digest: str | None = None) -> Path:
    """A build whose committed manifest names `image_id` (and `digest`) for its one job."""
    (folder / "timmx.toml").write_text(BUILD)
    (folder / "dist").mkdir(exist_ok=True)
    entry = {
        "key": "recorded-elsewhere",
        "backend": "onnx",
        "artifact": "dist/resnet18/onnx/resnet18.onnx",
        "artifacts": [],
        "verification": "passed",
        "image_id": image_id,
        "image_digest": digest,
    }
    manifest = {"schema_version": 1, "jobs": {"resnet18/onnx": entry}}
    (folder / "dist/timmx-build.json").write_text(json.dumps(manifest))
    return folder


def test_locked_build_refuses_a_manifest_naming_a_foreign_image(
    engine, cli, workdir, monkeypatch: pytest.MonkeyPatch
):
    alpine = FakeImage("sha256:" + "e" * 64, {"org.opencontainers.image.version": __version__})
    client = engine(FakeClient(FakeImages(alpine)))
    locked_project(workdir, alpine.id)
    before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    assert_refused(cli("build", "--locked"), "--locked", "not a timmx toolchain image")
    assert client.containers.created == []

    locked_project(workdir, "sha256:" + "0" * 64, "evil.example/x/timmx-onnx@sha256:" + "1" * 64)
    monkeypatch.setenv("TIMMX_REGISTRY", REGISTRY)
    assert_refused(cli("build", "--locked"), "will not be pulled", f"registry {REGISTRY}")
    assert client.containers.created == [] and client.images.pulled == []
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before
