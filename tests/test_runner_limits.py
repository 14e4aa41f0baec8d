"""Bad --memory and --timeout values are refused as user input, before Docker is contacted."""

from __future__ import annotations

import pytest

from timmx.cli.app import main
from timmx.errors import InvalidInputError
from timmx.runners import docker
from timmx.runners.docker import DockerRunner


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(*args, **kwargs):
        raise AssertionError("the Docker engine was contacted")

    monkeypatch.setattr(docker, "connect", connect)


@pytest.mark.parametrize("memory", ["lots", "", "8 g", "8gb", "-1g", "1.5g", "1m", "63m", "1024"])
def test_bad_memory_is_refused(memory):
    with pytest.raises(InvalidInputError) as caught:
        DockerRunner(memory=memory)
    assert caught.value.message == (
        f"--memory takes a size like 8g or 512m (at least 64m), got {memory!r}"
    )


@pytest.mark.parametrize("memory", ["8g", "8G", "512m", "64m", "65536k", "67108864", "2g"])
def test_sizes_docker_takes_are_accepted(memory):
    assert DockerRunner(memory=memory).memory == memory


@pytest.mark.parametrize("timeout", [0, -5])
def test_bad_timeout_is_refused(timeout):
    with pytest.raises(InvalidInputError) as caught:
        DockerRunner(timeout_s=timeout)
    assert caught.value.message == f"--timeout must be at least 1 second, got {timeout}"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory", "lots"], "--memory takes a size like 8g or 512m (at least 64m), got 'lots'"),
        (["--timeout", "0"], "--timeout must be at least 1 second, got 0"),
    ],
)
def test_cli_refuses_a_bad_limit_in_one_line(tmp_path, monkeypatch, capsys, flags, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:
        main(["export", "onnx", "resnet18", "--isolated", *flags])
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_api_refuses_bad_memory(tmp_path, monkeypatch):
    from timmx import export

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match="--memory takes a size"):
        export("onnx", "resnet18", isolated=True, memory="1m")
