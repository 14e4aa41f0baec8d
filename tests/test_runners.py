"""Every engine behind the Runner interface, and the one protocol of the warm workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from timmx.contract import ErrorInfo, ExportJob, ExportResult
from timmx.errors import ContractError, InvalidInputError
from timmx.runners import protocol
from timmx.runners.base import Runner
from timmx.runners.pool import WarmRunners
from timmx.runners.spec import (
    DockerSpec,
    LocalSpec,
    WarmContainerSpec,
    WarmProcessSpec,
    open_runner,
)
from timmx.runners.warm_container import WarmContainer
from timmx.runners.warm_process import WarmProcess

JOB = ExportJob(backend="onnx", model={"name": "resnet18"}, output="m.onnx")
# Refused by the backend's options, before torch is imported: a quick job that crosses over.
REFUSED = JOB.model_copy(update={"options": {"no_such_option": 1}})


@pytest.mark.parametrize(
    "message",
    [
        protocol.JobMessage(job=JOB),
        protocol.ProgressMessage(progress="Exporting to onnx"),
        protocol.ResultMessage(
            result=ExportResult(status="failed", error=ErrorInfo(kind="model", message="m"))
        ),
        protocol.ErrorMessage(error=ErrorInfo(kind="docker", message="gone"), ending=True),
        protocol.ErrorMessage(error=ErrorInfo(kind="docker", message="gone")),
    ],
)
def test_a_message_comes_back_as_it_went(message):
    line = protocol.encode(message)
    assert line.endswith("\n") and "\n" not in line[:-1]
    assert protocol.decode(line) == message
    assert protocol.decode(line.encode()) == message


def test_ending_is_written_only_when_true():
    error = ErrorInfo(kind="docker", message="gone")
    assert "ending" not in json.loads(protocol.encode(protocol.ErrorMessage(error=error)))
    ending = protocol.ErrorMessage(error=error, ending=True)
    assert json.loads(protocol.encode(ending))["ending"] is True


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json at all", "not a protocol message (not JSON): 'not json at all'"),
        ('{"hello": 1}', "not a protocol message: expected one of job, progress, result, error"),
        ('{"progress": "a", "result": {}}', "expected one of job, progress, result, error"),
        ("[1, 2]", "got list"),
        ('{"progress": 3}', "malformed progress message: progress:"),
        ('{"result": {"status": "maybe"}}', "malformed result message: result.status:"),
        ('{"error": {"kind": "x", "message": "y"}, "extra": 1}', "malformed error message"),
        ('{"job": {"backend": "onnx"}}', "malformed job message: job.model:"),
    ],
)
def test_a_line_out_of_protocol_is_a_one_line_contract_error(line: str, says: str):
    with pytest.raises(ContractError) as refused:
        protocol.decode(line)
    assert says in refused.value.message
    assert "\n" not in refused.value.message


def test_a_long_bad_line_is_quoted_short():
    with pytest.raises(ContractError) as refused:
        protocol.decode("x" * 10_000)
    assert len(refused.value.message) < 200


def test_read_message_skips_blank_lines_and_ends_with_the_stream(tmp_path: Path):
    path = tmp_path / "answers"
    path.write_text("\n" + protocol.encode(protocol.ProgressMessage(progress="a")) + "  \n")
    with path.open() as stream:
        assert protocol.read_message(stream) == protocol.ProgressMessage(progress="a")
        assert protocol.read_message(stream) is None


@pytest.mark.parametrize(
    "spec",
    [
        LocalSpec(),
        DockerSpec(memory="2g", timeout_s=60),
        WarmProcessSpec(timeout_s=60),
        WarmContainerSpec(toolchain="onnx"),
    ],
    ids=lambda spec: spec.kind,
)
def test_every_engine_is_a_runner_and_a_context_manager(spec):
    # Nothing is started until a job runs: opening and closing one costs nothing.
    with open_runner(spec) as runner:
        assert isinstance(runner, Runner)


def test_a_spec_crosses_as_json_and_comes_back_the_same_kind():
    from pydantic import TypeAdapter

    from timmx.runners.spec import RunnerSpec

    specs = [LocalSpec(write_report=False), DockerSpec(memory="2g"), WarmProcessSpec()]
    specs.append(WarmContainerSpec(toolchain="onnx", inputs=("ckpt/a.pth",), scratch=Path("d")))
    adapter = TypeAdapter(RunnerSpec)
    for spec in specs:
        assert adapter.validate_json(spec.model_dump_json()) == spec


def test_a_refused_limit_is_the_clis_one_line_refusal():
    with pytest.raises(InvalidInputError, match="--memory takes a size like 8g"):
        DockerSpec(memory="8m")
    with pytest.raises(InvalidInputError, match="--timeout must be at least 1 second"):
        WarmContainerSpec(toolchain="onnx", timeout_s=0)


def serving(workspace: Path) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", f"timmx.worker --serve {workspace}"], capture_output=True, text=True
    )
    return found.stdout.splitlines()


def test_a_warm_process_serves_jobs_and_ends_on_leaving_the_with(tmp_path: Path):
    with WarmProcess(WarmProcessSpec(timeout_s=600)) as runner:
        for _ in range(2):  # one process answers both: the error crossed over, it lives on
            with pytest.raises(InvalidInputError) as refused:
                runner.run(REFUSED, tmp_path)
            assert "no-such-option" in refused.value.message
            assert runner.alive
        process = runner.process
        assert process is not None and len(serving(tmp_path)) == 1
    assert process.poll() is not None and runner.process is None
    assert serving(tmp_path) == []


def test_a_warm_process_for_another_workspace_is_a_fresh_one(tmp_path: Path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    with WarmProcess() as runner:
        with pytest.raises(InvalidInputError):
            runner.run(REFUSED, first)
        before = runner.process
        with pytest.raises(InvalidInputError):
            runner.run(REFUSED, second)
        assert before is not None and before.poll() is not None  # ended, not left behind
        assert runner.process is not before and serving(first) == []
    assert serving(second) == []


def test_the_worker_answers_a_line_out_of_protocol_and_serves_on(tmp_path: Path):
    lines = [
        "not json\n",
        '{"hello": 1}\n',
        protocol.encode(protocol.ProgressMessage(progress="x")),
    ]
    lines.append(protocol.encode(protocol.JobMessage(job=REFUSED)))
    done = subprocess.run(
        [sys.executable, "-m", "timmx.worker", "--serve", str(tmp_path)],
        input="".join(lines),
        capture_output=True,
        text=True,
        timeout=300,  # a hang guard: it answers in seconds
    )
    assert done.returncode == 0, done.stderr
    answers = [protocol.decode(line) for line in done.stdout.splitlines()]
    assert all(isinstance(answer, protocol.ErrorMessage) for answer in answers)
    kinds = [(a.error.kind, a.error.message.split(":")[0]) for a in answers]
    assert kinds == [
        ("contract", "not a protocol message (not JSON)"),
        ("contract", "not a protocol message"),
        ("contract", "a worker takes job messages only"),
        ("invalid_input", kinds[3][1]),
    ]
    assert "no-such-option" in answers[3].error.message


def test_a_slot_keeps_one_warm_process_for_any_time_limit_and_a_container_per_limits():
    with WarmRunners() as runners:
        short = runners.runner(WarmProcessSpec(timeout_s=5))
        long = runners.runner(WarmProcessSpec(timeout_s=50))
        assert short is long and long.spec.timeout_s == 50  # the limit of the job it runs next
        onnx = runners.runner(WarmContainerSpec(toolchain="onnx", memory="4g"))
        assert runners.runner(WarmContainerSpec(toolchain="onnx", memory="4g")) is onnx
        assert runners.runner(WarmContainerSpec(toolchain="onnx", memory="8g")) is not onnx
        assert runners.processes == [short]


def test_a_warm_container_removes_its_exchange_folders_on_leaving_the_with(tmp_path: Path):
    with WarmContainer(WarmContainerSpec(toolchain="onnx")) as runner:
        exchange = runner._exchange_folder(tmp_path / "dist")
        assert exchange.is_dir() and exchange.name == "work"
    assert not exchange.parent.exists()
