"""An export replaces only what timmx made: `-o .`, a user's folder, a folder artifact with the
user's file in it, a file that merely shares the extension, a side file nobody listed, and a
link are refused in one line before any work, with nothing touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_errors import assert_refused

SMALL = ["--input-size", "3", "32", "32"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("output", [".", "..", "./", "src/.."])
def test_ncnn_into_the_current_folder_or_above_is_refused(cli, workdir, output):
    project = workdir / "project"
    (project / "src").mkdir(parents=True)
    (project / "keep.txt").write_text("the user's")
    (project / "src" / "a.py").write_text("x = 1\n")
    import os

    os.chdir(project)
    before = snapshot(workdir)
    assert_refused(cli("export", "ncnn", "resnet18", *SMALL, "-o", output), "name a new folder")
    assert snapshot(workdir) == before
    assert sorted(p.name for p in project.iterdir()) == ["keep.txt", "src"]


def test_the_home_folder_is_refused(cli, workdir, monkeypatch):
    home = workdir / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export A=1\n")
    monkeypatch.setenv("HOME", str(home))
    assert_refused(cli("export", "ncnn", "resnet18", *SMALL, "-o", home), "the home folder")
    assert snapshot(home) == {".bashrc": b"export A=1\n"}


def test_a_users_folder_is_refused_naming_its_files(cli, workdir):
    (workdir / "src").mkdir()
    (workdir / "src" / "a.py").write_text("x = 1\n")
    assert_refused(
        cli("export", "ncnn", "resnet18", *SMALL, "-o", "src"), "src/a.py", "timmx did not make"
    )
    assert snapshot(workdir / "src") == {"a.py": b"x = 1\n"}
    assert [p.name for p in workdir.iterdir()] == ["src"]  # no staging folder either


def test_an_empty_folder_is_used(cli, workdir):
    (workdir / "out_ncnn").mkdir()
    result = cli("export", "ncnn", "resnet18", *SMALL, "-o", "out_ncnn")
    assert result.code == 0, result.err
    assert sorted(snapshot(workdir / "out_ncnn")) == [
        "model.ncnn.bin",
        "model.ncnn.param",
        "model_ncnn.py",
    ]


def test_an_ncnn_folder_without_its_report_is_replaced_by_its_layout(cli, workdir):
    """Upstream timmx writes no report: a folder holding only ncnn's files is ncnn's."""
    assert cli("export", "ncnn", "resnet18", *SMALL, "-o", "r_ncnn").code == 0
    (workdir / "r_ncnn.json").unlink()
    first = snapshot(workdir / "r_ncnn")
    result = cli("export", "ncnn", "resnet18", *SMALL, "--seed", "3", "-o", "r_ncnn")
    assert result.code == 0, result.err
    assert snapshot(workdir / "r_ncnn") != first  # other weights: it was replaced

    (workdir / "r_ncnn.json").unlink()
    (workdir / "r_ncnn" / "ncnn.py").write_text("import os\n")  # what model_ncnn.py may import
    before = snapshot(workdir / "r_ncnn")
    assert_refused(cli("export", "ncnn", "resnet18", *SMALL, "-o", "r_ncnn"), "ncnn.py")
    assert snapshot(workdir / "r_ncnn") == before


def test_an_xml_that_is_no_ir_is_refused(cli, workdir):
    (workdir / "pom.xml").write_text("<project><modelVersion>4.0.0</modelVersion></project>\n")
    assert_refused(
        cli("export", "openvino", "resnet18", *SMALL, "-o", "pom.xml"),
        "not an artifact of timmx's openvino backend",
    )
    assert (workdir / "pom.xml").read_text().startswith("<project>")


def test_a_side_file_nobody_listed_is_refused(cli, workdir):
    """`m.bin` beside a new `m.xml` is the user's: OpenVINO's weights would replace it."""
    (workdir / "m.bin").write_bytes(b"firmware")
    assert_refused(cli("export", "openvino", "resnet18", *SMALL, "-o", "m.xml"), "m.bin")
    assert (workdir / "m.bin").read_bytes() == b"firmware"
    assert sorted(p.name for p in workdir.iterdir()) == ["m.bin"]


def test_a_link_at_the_destination_is_refused(cli, workdir):
    (workdir / "real.onnx").write_bytes(b"not mine to follow")
    (workdir / "m.onnx").symlink_to(workdir / "real.onnx")
    assert_refused(cli("export", "onnx", "resnet18", *SMALL, "-o", "m.onnx"), "symbolic link")
    assert (workdir / "m.onnx").is_symlink()
    assert (workdir / "real.onnx").read_bytes() == b"not mine to follow"


def test_a_previous_artifact_and_its_side_file_are_replaced(cli, workdir):
    """What timmx made (the report lists it) is replaced, side file and all."""
    flags = ["--mode", "fp32", *SMALL, "-o", "m.xml"]
    assert cli("export", "openvino", "resnet18", *flags).code == 0
    first = snapshot(workdir)
    result = cli("export", "openvino", "resnet18", "--seed", "5", *flags)
    assert result.code == 0, result.err
    assert snapshot(workdir)["m.bin"] != first["m.bin"]
