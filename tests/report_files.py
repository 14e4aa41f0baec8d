"""Check a report's list of files against the files themselves, by our own hashing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def assert_report_lists_the_files(artifact: Path) -> dict:
    """Every file the report beside `artifact` lists exists with that size and sha256, and every
    file of the artifact (each member of a folder artifact) is listed. Returns the report."""
    report = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    folder = artifact.parent
    listed = {entry["path"]: entry for entry in report["artifacts"]}
    assert listed, "the report lists no file"
    for path, entry in listed.items():
        data = (folder / path).read_bytes()
        assert len(data) == entry["bytes"], path
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], path
    members = sorted(p for p in artifact.rglob("*") if p.is_file()) if artifact.is_dir() else []
    on_disk = {p.relative_to(folder).as_posix() for p in members} or {artifact.name}
    assert on_disk <= set(listed), sorted(on_disk - set(listed))
    return report
