"""Fail the image build unless every installed distribution is pinned by the recipe's locks.

    python check_lock.py LOCK_DIR

Every `*.lock` and `*.constraints` file in LOCK_DIR counts (`name==version`, with or without
`--hash=` options); pip and the venv's own tools aside.
A local version label (2.14.1+cpu) matches its pin (2.14.1).
"""

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

IGNORED = {"pip", "wheel", "timmx"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(folder: Path) -> dict[str, str]:
    found = {}
    paths = sorted([*folder.glob("*.lock"), *folder.glob("*.constraints")])
    # the toolchain's lock last: a pin of its own overrides a lower layer's (a toolchain variant
    # on another toolchain's torch layer reinstalls what it needs otherwise, e.g. typing-extensions)
    for path in sorted(paths, key=lambda path: path.name == "toolchain.lock"):
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip().rstrip("\\").strip()
            if line and not line.startswith("-"):  # `--hash=...` continues the pin above
                name, _, version = line.partition("==")
                found[canonical(name)] = version.split()[0] if version.strip() else ""
    return found


def main() -> int:
    wanted = pins(Path(sys.argv[1]))
    problems = []
    for dist in distributions():
        name = canonical(dist.metadata["Name"])
        if name in IGNORED:
            continue
        installed = dist.version.split("+", 1)[0]
        if name not in wanted:
            problems.append(f"{name}=={dist.version} is installed but not pinned")
        elif wanted[name] != installed:
            problems.append(f"{name}=={dist.version} is installed, the lock pins {wanted[name]}")
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
