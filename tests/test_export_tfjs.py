"""TF.js exports on the host: refusals only (the backend runs in its image: its numbers in Node.js
against timm are tests/isolated/test_isolated_tfjs.py's and tests/test_conformance.py's), and
the folder layout the backend claims as its own."""

from __future__ import annotations

import json

import pytest

from timmx.backends import get_backend

ARGS = ("export", "tfjs", "test_resnet", "--input-size", 3, 32, 32)


@pytest.mark.parametrize(
    ("flags", "words"),
    [(("--quantize", "int4"), "--quantize"), (("--quantize", "uint16"), "--quantize")],
)
def test_bad_options_are_one_line(cli, workdir, flags, words):
    result = cli(*ARGS, *flags)
    assert result.code == 2
    assert result.err.count("\n") == 1 and words in result.err
    assert list(workdir.iterdir()) == []


def test_in_process_is_refused_with_the_reason(cli, workdir, monkeypatch):
    if not get_backend("tfjs").missing_packages():
        pytest.skip("tensorflowjs is installed here")
    monkeypatch.delenv("TIMMX_ISOLATED", raising=False)
    result = cli(*ARGS, "-o", "m_web_model")
    assert result.code == 2
    assert result.err.count("\n") == 1
    assert "--isolated" in result.err and "tensorflow<=2.19" in result.err
    assert list(workdir.iterdir()) == []


def test_it_owns_only_a_graph_model_folder(tmp_path):
    backend = get_backend("tfjs")
    folder = tmp_path / "m_web_model"
    folder.mkdir()
    manifest = [{"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": []}]
    (folder / "model.json").write_text(json.dumps({"weightsManifest": manifest}))
    for name in manifest[0]["paths"]:
        (folder / name).write_bytes(b"\0")
    assert backend.owns_existing(folder)
    (folder / "notes.txt").write_text("mine")
    assert not backend.owns_existing(folder)  # a file model.json does not list
    (folder / "notes.txt").unlink()
    (folder / "model.json").write_text("not json")
    assert not backend.owns_existing(folder)
    assert not backend.owns_existing(tmp_path / "missing")
