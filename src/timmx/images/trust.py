"""Which images timmx runs with a job's files, the network or a token: its own toolchain images.

A toolchain image carries the `ai.timmx.toolchain` label and the version of the timmx that built
it. Where an image comes from a file others can edit (the manifest that `timmx build --locked`
follows), it must carry those of the job's toolchain and of this timmx, and a digest to pull it
by must name the registry the user configured (TIMMX_REGISTRY): a manifest edited in a pull
request cannot make timmx run `alpine`, or an image of someone else's registry, with the
network and HF_TOKEN.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from timmx.images.identity import LABEL_TOOLCHAIN, LABEL_VERSION

_DIGEST_REF = re.compile(r"(?P<repository>[^@\s]+)@sha256:[0-9a-f]{64}")
_DOCKER_HUB = ("docker.io/", "index.docker.io/")


def foreign_image(labels: Mapping[str, str] | None, toolchain: str | None = None) -> str | None:
    """Why an image with these labels is not a toolchain image of this timmx (of `toolchain`,
    when named); None when it is one."""
    from timmx import __version__

    labels = labels or {}
    found = labels.get(LABEL_TOOLCHAIN)
    if not found:
        return "it is not a timmx toolchain image"
    if toolchain is not None and found != toolchain:
        return f"it is the {found} toolchain's image, not the {toolchain} toolchain's"
    version = labels.get(LABEL_VERSION)
    if version != __version__:
        return f"it was built by timmx {version or 'of an unknown version'}, not {__version__}"
    return None


def foreign_digest(digest: str, registry: str | None) -> str | None:
    """Why `digest` must not be pulled: not a digest reference, or not of `registry` (the
    configured one); None when it may be."""
    match = _DIGEST_REF.fullmatch(digest)
    if match is None:
        return "it is not a digest reference (<registry>/<name>@sha256:<64 hex digits>)"
    if registry is None:
        return "no registry is configured (set TIMMX_REGISTRY to the one the images are in)"
    if not _hub_name(match["repository"]).startswith(_hub_name(registry.rstrip("/")) + "/"):
        return f"it is not in the configured registry {registry}"
    return None


def _hub_name(name: str) -> str:
    """Docker Hub's names without its host, as the engine records them."""
    for host in _DOCKER_HUB:
        if name.startswith(host):
            return name[len(host) :]
    return name


def timmx_image_id(client, ref: str) -> str:
    """The id of the image `ref` names here, once its labels show a toolchain image of this
    timmx; run it by that id, which no tag moved meanwhile can change. DockerError otherwise."""
    from docker.errors import APIError, ImageNotFound

    from timmx.errors import DockerError, first_line

    try:
        image = client.images.get(ref)
    except (ImageNotFound, APIError) as exc:
        raise DockerError(f"the image {ref} is not usable: {first_line(exc)}") from None
    problem = foreign_image(image.labels)
    if problem is not None:
        raise DockerError(
            f"the image {ref} will not run with the network: {problem}; run only images that "
            "`timmx images build` made or pulled"
        )
    return image.id
