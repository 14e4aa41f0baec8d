"""`timmx images base`: a minimal Debian + Python 3.11 base image, for machines with no registry.

debootstrap (minbase) builds a bookworm root filesystem with python3, python3-venv and
ca-certificates from the machine's own Debian mirror; a venv at /opt/venv comes first on PATH
(Debian marks its system Python externally managed); `docker import` turns it into an image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from timmx.errors import DockerError, InvalidInputError, first_line
from timmx.runners.base import Progress

DEFAULT_TAG = "timmx-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
CA_PATH = "/etc/ssl/certs/ca-certificates.crt"
PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def debian_mirror(root: Path = Path("/"), suite: str = SUITE) -> str:
    """The first `deb` source of `suite` in this machine's apt sources; deb.debian.org if none."""
    for types, uris, suites in _apt_sources(root):
        if "deb" in types and suite in suites and uris:
            return uris[0].rstrip("/")
    return DEFAULT_MIRROR


def _apt_sources(root: Path):
    apt = root / "etc" / "apt"
    one_line = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in one_line:
        for line in _read(path).splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] in ("deb", "deb-src"):
                rest = words[1:]
                if rest[0].startswith("["):  # [arch=amd64 signed-by=...] options
                    while rest and not rest[0].endswith("]"):
                        rest = rest[1:]
                    rest = rest[1:]
                if len(rest) >= 2:
                    yield [words[0]], [rest[0]], [rest[1]]
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in _read(path).split("\n\n"):
            fields = _deb822(stanza)
            if fields.get("enabled", "yes").lower() == "no":
                continue
            yield (
                fields.get("types", "").split(),
                fields.get("uris", "").split(),
                fields.get("suites", "").split(),
            )


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in stanza.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line[0] in " \t" and key:
            fields[key] += " " + line.strip()
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        fields[key] = value.strip()
    return fields


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def build_base(
    client,
    tag: str = DEFAULT_TAG,
    mirror: str | None = None,
    ca_bundle: Path | None = None,
    progress: Progress = lambda _: None,
) -> str:
    """Debootstrap, add the venv (and a CA bundle), import as `tag`; return the image id."""
    if os.geteuid() != 0:
        raise InvalidInputError("`timmx images base` runs debootstrap and must run as root (sudo)")
    if shutil.which("debootstrap") is None:
        raise InvalidInputError("debootstrap is not installed: apt-get install debootstrap")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise InvalidInputError(f"--ca-bundle {ca_bundle} is not a file")
    mirror = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="timmx-base.", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} from {mirror}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
            progress,
        )
        if ca_bundle is not None:
            progress(f"adding the CA bundle {ca_bundle}")
            shutil.copyfile(ca_bundle, rootfs / CA_PATH.lstrip("/"))
        progress("creating the venv /opt/venv")
        _run(
            ["chroot", str(rootfs), "/usr/bin/python3", "-m", "venv", "/opt/venv"], "venv", progress
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            _empty(rootfs / junk)
        tarball = Path(tmp) / "rootfs.tar"
        progress("packing the root filesystem")
        _run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], "tar", progress
        )
        progress(f"importing as {tag}")
        repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "")
        changes = [
            f"ENV PATH={PATH}",
            "ENV LANG=C.UTF-8",
            f"ENV SSL_CERT_FILE={CA_PATH}",
            f"ENV PIP_CERT={CA_PATH}",
            f"ENV REQUESTS_CA_BUNDLE={CA_PATH}",
            "LABEL ai.timmx.base=bookworm",
            'CMD ["python3"]',
        ]
        try:
            answer = client.api.import_image_from_file(
                str(tarball), repository=repository, tag=version or "latest", changes=changes
            )
        except Exception as exc:
            raise DockerError(
                f"docker import of the base image failed: {first_line(exc)}"
            ) from None
    progress(f"built {tag}: {first_line(Exception(str(answer)), 120)}")
    return client.images.get(tag).id


def _run(command: list[str], what: str, progress: Progress) -> None:
    lines: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            progress(line)
    if proc.returncode != 0:
        tail = " | ".join(line for line in lines[-3:] if line)
        raise DockerError(f"{what} failed with exit code {proc.returncode}: {tail}")


def _empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
