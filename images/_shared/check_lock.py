"""Fail the image build unless every installed distribution is pinned by the recipe's locks.

    python check_lock.py LOCK_DIR

Every `*.lock` and `*.constraints` file in LOCK_DIR counts; pip and the venv's own tools aside.
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
    for path in sorted([*folder.glob("*.lock"), *folder.glob("*.constraints")]):
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                found[canonical(name)] = version.strip()
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
