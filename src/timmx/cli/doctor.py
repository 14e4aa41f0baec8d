"""`timmx doctor`: what can run here, and how."""

from __future__ import annotations

import json

from rich.table import Table

from timmx.backends import all_backends
from timmx.cli import console
from timmx.environment import describe


def docker_status() -> str:
    """'ok (engine X)' or the reason the engine cannot be reached."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return "docker SDK not installed"
    try:
        client = docker.from_env(timeout=5)
        engine = client.version().get("Version", "?")
        client.close()
        return f"ok (engine {engine})"
    except DockerException as exc:
        return f"unreachable ({str(exc).splitlines()[0][:120]})"


def run_doctor(json_out: bool) -> None:
    env = describe(tuple(sorted({d for b in all_backends() for d in b.requires})))
    rows = []
    for backend in all_backends():
        missing = backend.missing_packages()
        rows.append(
            {
                "backend": backend.name,
                "in_process": not missing,
                "missing": missing,
                "isolated_only": backend.isolated_only,
                "image": backend.toolchain,
            }
        )
    docker = docker_status()
    if json_out:
        payload = {"environment": env.model_dump(), "backends": rows, "docker": docker}
        console.out.print_json(json.dumps(payload))
        return
    table = Table(title=f"timmx {env.timmx} on Python {env.python} ({env.platform})")
    table.add_column("backend")
    table.add_column("in-process")
    table.add_column("--isolated image")
    for row in rows:
        if row["in_process"]:
            status = "[green]yes[/]"
        elif row["isolated_only"]:
            status = f"[yellow]no[/] (isolated only: {console.escape(row['isolated_only'])})"
        else:
            status = f"[yellow]no[/] (needs {', '.join(row['missing'])})"
        table.add_row(row["backend"], status, f"timmx-{row['image']}")
    console.out.print(table)
    versions = ", ".join(f"{k} {v}" for k, v in env.packages.items()) or "none"
    console.out.print(f"packages: {versions}")
    colour = "green" if docker.startswith("ok") else "yellow"
    console.out.print(f"docker: [{colour}]{console.escape(docker)}[/]")
