"""Images by digest: push to a registry, learn an image's digest, and find or pull exactly the
image a build recorded (`timmx build --locked`).

An image is named three ways: its tag (`timmx-onnx:<inputs>`, which a rebuild moves), its id
(the sha256 of its configuration, the same on every machine that has it) and, once in a
registry, its digest (`<registry>/timmx-onnx@sha256:...`, by which any machine can pull it).

The manifest that names them is a file anyone with the repository can edit, so a recorded image
runs only when it is a toolchain image of the job's toolchain and this timmx, and is pulled only
from the registry the user configured (see timmx.images.trust).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from timmx.errors import DockerError, InvalidInputError, TimmxError, first_line
from timmx.images.build import Line, ignore_line
from timmx.images.find import Found
from timmx.images.trust import foreign_digest, foreign_image


@dataclass(frozen=True)
class Pin:
    """The image a job must run in under `--locked`."""

    image_id: str
    digest: str | None
    toolchain: str  # the job's backend's: the image must be of it


def check_pins(pins: Iterable[Pin], registry: str | None) -> None:
    """Before a locked build starts, for each recorded image, in one line: refuse one that is
    here but is not a toolchain image of its job's toolchain and this timmx, and one that is not
    here and not in `registry` (the configured one) by digest."""
    from timmx.images.engine import connect

    client = connect("or drop --locked")
    try:
        for pin in sorted(set(pins), key=lambda p: (p.image_id, p.toolchain)):
            image = _present(client, pin.image_id)
            if image is not None:
                _check_labels(image, pin, InvalidInputError)
            elif pin.digest is None:
                raise InvalidInputError(_never_pushed(pin.image_id))
            else:
                _check_digest(pin, registry)
    finally:
        client.close()


def _present(client, image_id: str):
    from docker.errors import ImageNotFound

    try:
        return client.images.get(image_id)
    except ImageNotFound:
        return None


def _check_labels(image, pin: Pin, error: type[TimmxError]) -> None:
    problem = foreign_image(image.labels, pin.toolchain)
    if problem is not None:
        raise error(
            f"--locked: the recorded {pin.toolchain} image {pin.image_id[:19]} will not run: "
            f"{problem} (was the manifest edited?): rebuild the manifest without --locked"
        )


def _check_digest(pin: Pin, registry: str | None) -> None:
    assert pin.digest is not None
    problem = foreign_digest(pin.digest, registry)
    if problem is not None:
        raise InvalidInputError(
            f"--locked: the recorded {pin.toolchain} image {pin.digest} will not be pulled: "
            f"{problem}: set TIMMX_REGISTRY, or rebuild the manifest without --locked"
        )


def _never_pushed(image_id: str) -> str:
    return (
        f"the recorded image {image_id[:19]} is not here and was never in a registry: push "
        "it where it was built (`timmx images push --registry ...`, then `timmx build`) or "
        "drop --locked"
    )


def push_image(client, ref: str, registry: str, on_line: Line = ignore_line) -> str:
    """Tag `ref` under `registry` and push it; return its digest reference."""
    from docker.errors import APIError, ImageNotFound

    try:
        image = client.images.get(ref)
    except ImageNotFound:
        raise DockerError(f"the image {ref} is not here: build it first") from None
    name, tag = ref.rsplit(":", 1)
    repository = f"{registry.rstrip('/')}/{name.rsplit('/', 1)[-1]}"
    image.tag(repository, tag)
    digest = None
    try:
        for chunk in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in chunk:
                raise DockerError(f"pushing {repository}:{tag} failed: {chunk['error']}")
            digest = (chunk.get("aux") or {}).get("Digest") or digest
            if chunk.get("status") and "progress" not in chunk:
                on_line(f"{chunk['status']} {chunk.get('id', '')}".strip())
    except APIError as exc:
        raise DockerError(f"pushing {repository}:{tag} failed: {first_line(exc)}") from None
    if digest is None:
        raise DockerError(f"the registry gave no digest for {repository}:{tag}")
    return f"{repository}@{digest}"


def repo_digest(client, image_id: str) -> str | None:
    """The image's digest reference in a registry it was pushed to or pulled from (None for an
    image that never was in one)."""
    from docker.errors import APIError, ImageNotFound

    try:
        digests = client.images.get(image_id).attrs.get("RepoDigests") or []
    except (ImageNotFound, APIError):
        return None
    return sorted(digests)[0] if digests else None


def pin_image(client, pin: Pin, registry: str | None, on_line: Line = ignore_line) -> Found:
    """Exactly the image a build recorded: present here by its id, or pulled by its digest from
    `registry` (the configured one); either way a toolchain image of `pin.toolchain` and this
    timmx, checked before anything runs in it."""
    from docker.errors import APIError, NotFound

    image_id, digest = pin.image_id, pin.digest
    image = _present(client, image_id)
    if image is not None:
        _check_labels(image, pin, InvalidInputError)
        return Found(_ref(image, digest), image.id, True, "present")
    if digest is None:
        raise InvalidInputError(_never_pushed(image_id))
    _check_digest(pin, registry)
    on_line(f"pulling {digest}")
    try:
        image = client.images.pull(digest)
    except (APIError, NotFound) as exc:
        raise DockerError(f"cannot pull the recorded image {digest}: {first_line(exc)}") from None
    if image.id != image_id:
        raise DockerError(
            f"{digest} is the image {image.id[:19]}, not the recorded {image_id[:19]}: the "
            "manifest and the registry disagree"
        )
    _check_labels(image, pin, DockerError)
    return Found(digest, image.id, True, "pulled")


def _ref(image, digest: str | None) -> str:
    """A name that runs this image: the recorded digest only when it is one of the image's (the
    engine does not pull on create, and a foreign digest names nothing here)."""
    if digest is not None and digest in (image.attrs.get("RepoDigests") or []):
        return digest
    return image.tags[0] if image.tags else image.id


class DigestLookup:
    """Each image id's registry digest, asked of the engine once (no engine: None)."""

    def __init__(self) -> None:
        self._client = None
        self._known: dict[str, str | None] = {}

    def __call__(self, image_id: str | None) -> str | None:
        if image_id is None:
            return None
        if image_id not in self._known:
            if self._client is None:
                from timmx.images.engine import connect

                try:
                    self._client = connect()
                except TimmxError:
                    return None
            self._known[image_id] = repo_digest(self._client, image_id)
        return self._known[image_id]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
