"""`python -m timmx.worker job.json`: jobs stay inside their folder, errors are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from timmx import worker
from timmx.contract import ExportJob, InputSpec, ModelSpec, check_paths_inside
from timmx.errors import ContractError


def _job(backend: str = "onnx", **changes) -> dict:
    job = ExportJob(
        backend=backend,
        model=ModelSpec(name="resnet18"),
        input=InputSpec(size=(3, 32, 32)),
        output=f"m.{'mlpackage' if backend == 'coreml' else 'onnx'}",
    )
    data = json.loads(job.model_dump_json())
    for dotted, value in changes.items():  # "model.checkpoint" edits data["model"]["checkpoint"]
        *parents, leaf = dotted.split(".")
        target = data
        for key in parents:
            if target.get(key) is None:  # an absent section, e.g. calibration
                target[key] = {}
            target = target[key]
        target[leaf] = value
    return data


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """A job folder three levels down, so '../..' lands in tmp_path, where it can be watched."""
    folder = tmp_path / "a" / "b" / "job"
    folder.mkdir(parents=True)
    return folder


def _run_worker(job_dir: Path, job: dict | str | None) -> subprocess.CompletedProcess[str]:
    if job is not None:
        text = job if isinstance(job, str) else json.dumps(job)
        (job_dir / "job.json").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "timmx.worker", "job.json"],
        cwd=job_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def _result(job_dir: Path) -> dict:
    return json.loads((job_dir / "out" / "result.json").read_text())


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.mark.parametrize(
    ("field", "value", "outside"),
    [
        ("output", "../../x.onnx", "a/x.onnx"),
        ("output", "sub/../../../x.onnx", "a/x.onnx"),
        ("model.checkpoint", "../../../secret.pth", None),
        ("calibration.path", "/etc/passwd", None),
    ],
)
def test_paths_outside_the_job_folder_are_refused(job_dir, field, value, outside):
    tmp = job_dir.parents[2]
    (tmp / "secret.pth").write_bytes(b"not for the worker")  # exists: refused for its place
    before = _files(tmp)
    done = _run_worker(job_dir, _job(**{field: value}))

    assert done.returncode == 2, done.stderr
    lines = _error_lines(done)
    assert len(lines) == 1 and f"'{field}'" in lines[0] and repr(value) in lines[0]
    assert "Traceback" not in done.stderr
    result = _result(job_dir)
    assert result["status"] == "failed" and result["error"]["kind"] == "contract"
    assert result["error"]["message"] == lines[0].removeprefix("error: ")
    created = _files(tmp) - before - {job_dir / "job.json"}
    assert created == {job_dir / "out", job_dir / "out" / "result.json"}
    if outside is not None:
        assert not (tmp / outside).exists()


def test_a_file_option_outside_is_refused(job_dir):
    (job_dir.parent / "labels.txt").write_text("cat\ndog\n")
    done = _run_worker(job_dir, _job("coreml", options={"labels": "../labels.txt"}))
    assert done.returncode == 2
    lines = _error_lines(done)
    assert len(lines) == 1 and "'options.labels'" in lines[0] and "'../labels.txt'" in lines[0]
    assert _result(job_dir)["error"]["kind"] == "contract"


def test_a_missing_checkpoint_inside_is_refused_as_usual(job_dir):
    done = _run_worker(job_dir, _job(**{"model.checkpoint": "weights/missing.pth"}))
    assert done.returncode == 2, done.stderr
    lines = _error_lines(done)
    assert len(lines) == 1 and "missing.pth" in lines[0]
    result = _result(job_dir)
    assert result["error"]["kind"] == "checkpoint"
    assert not (job_dir / "m.onnx").exists()


@pytest.mark.parametrize(
    ("text", "kind", "says"),
    [
        ("{not json", "contract", "not valid JSON"),
        (json.dumps({"backend": "onnx", "output": "m.onnx"}), "contract", "model"),
        (None, "invalid_input", "job file not found"),
    ],
)
def test_a_bad_job_writes_a_result_into_a_new_out_folder(job_dir, text, kind, says):
    assert not (job_dir / "out").exists()
    done = _run_worker(job_dir, text)
    assert done.returncode == 2, done.stderr
    lines = _error_lines(done)
    assert len(lines) == 1 and says in lines[0]
    assert "Traceback" not in done.stderr
    assert _result(job_dir)["error"]["kind"] == kind


def test_an_export_without_an_out_folder_succeeds(job_dir):
    done = _run_worker(job_dir, _job())
    assert done.returncode == 0, done.stderr
    assert not _error_lines(done)
    result = _result(job_dir)
    assert result["status"] == "success" and result["artifacts"][0]["path"] == "m.onnx"
    assert (job_dir / "m.onnx").is_file()


def test_a_bug_keeps_exit_code_1_and_its_traceback(tmp_path, monkeypatch, capsys):
    from timmx.runners.local import LocalRunner

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(LocalRunner, "run", explode)
    (tmp_path / "job.json").write_text(json.dumps(_job()))
    assert worker.main([str(tmp_path / "job.json")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: internal error: RuntimeError: boom" in err
    error = _result(tmp_path)["error"]
    assert error == {"kind": "internal", "message": "RuntimeError: boom"}


@pytest.mark.parametrize(
    "path", ["/abs/x.onnx", "..", "../x", "a/../../x", "..\\x", "C:\\x.onnx", "c:x"]
)
def test_check_paths_inside_refuses(path):
    job = ExportJob.model_validate(_job(output=path))
    with pytest.raises(ContractError, match="'output'"):
        check_paths_inside(job)


@pytest.mark.parametrize("path", ["m.onnx", "out/m.onnx", "a/../m.onnx", "./m.onnx", "..m.onnx"])
def test_check_paths_inside_accepts(path):
    job = ExportJob.model_validate(
        _job("coreml", output=path, options={"labels": path}, **{"model.checkpoint": path})
    )
    check_paths_inside(job)


ERROR_LINE = b"error: job file not found: /job/job.json\n"


def test_the_host_does_not_echo_the_workers_error_line(tmp_path):
    """The worker's `error:` line names /job paths; the host says it again with its own."""
    from timmx.runners.container_job import Mounts
    from timmx.runners.docker import DockerRunner

    class Container:
        id = "c0"

        def __init__(self):
            self.attrs = {"State": {"OOMKilled": False}}

        def start(self): ...
        def logs(self, **kwargs):  # the worker's steps on stdout, the rest on stderr
            if kwargs.get("stdout") is False:
                return iter([b"I0000 converter.cc:1] C++ log\n", ERROR_LINE])
            if kwargs.get("stderr") is True:  # --debug: both streams
                raise AssertionError("stderr streamed without --debug")
            return iter([b"Exporting to onnx...\n"])

        def wait(self):
            return {"StatusCode": 2}

        def reload(self): ...
        def kill(self): ...
        def remove(self, **kwargs): ...

    class Client:
        class api:
            timeout = 60

            @staticmethod
            def wait(container_id, condition):
                return {"StatusCode": 2}

            @staticmethod
            def events(**kwargs):
                return iter([])

        class containers:
            @staticmethod
            def create(**kwargs):
                return Container()

    shown: list[str] = []
    mounts = Mounts(job=ExportJob.model_validate(_job()))
    code, _, _, tail, other = DockerRunner()._run_container(
        Client(), "img", mounts, tmp_path, shown.append
    )
    assert code == 2 and shown == ["Exporting to onnx..."]  # no converter log line either
    assert tail[-1] == "error: job file not found: /job/job.json"  # kept for a missing result
    assert other[0] == "I0000 converter.cc:1] C++ log"  # for the log file (keep_log)


def _worker_with_limit(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "TIMMX_TIME_LIMIT_S": "1"}  # importing torch alone takes longer
    return subprocess.run(
        [sys.executable, "-m", "timmx.worker", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        **kwargs,
    )


def test_the_worker_keeps_the_time_limit_with_no_host_watching(job_dir):
    """A container whose host died must still stop: the worker ends the job at its limit."""
    (job_dir / "job.json").write_text(json.dumps(_job()))
    done = _worker_with_limit(["job.json"], job_dir)
    assert done.returncode == 2, done.stderr
    assert _error_lines(done) == [
        "error: the onnx export timed out after 1 s and was stopped; nothing was written "
        "(raise --timeout)"
    ]
    result = json.loads((job_dir / "out" / "result.json").read_text())
    assert result["status"] == "failed" and "timed out after 1 s" in result["error"]["message"]
    assert sorted(p.name for p in (job_dir / "out").iterdir()) == ["result.json"]


def test_a_serving_worker_says_it_ends_at_the_time_limit(tmp_path):
    line = json.dumps({"job": _job()}) + "\n"
    done = _worker_with_limit(["--serve", str(tmp_path)], tmp_path, input=line + line)
    answers = [json.loads(a) for a in done.stdout.splitlines()]
    assert done.returncode == 2
    assert (
        answers[-1]["ending"] is True and "timed out after 1 s" in answers[-1]["error"]["message"]
    )
    assert sum("error" in a for a in answers) == 1  # it ended: the second job was never taken
    assert not (tmp_path / "m.onnx").exists()
