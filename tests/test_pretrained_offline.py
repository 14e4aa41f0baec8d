"""`--pretrained` without the Hugging Face hub: cached weights load offline, and missing ones are
one line (exit 2), not a minute of retries. The cache is laid out by hand, as the hub does."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.conftest import assert_matches, randomize_norms

MODEL = "resnet18.a1_in1k"
REPO = "timm/resnet18.a1_in1k"
REVISION = "0123456789abcdef0123456789abcdef01234567"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once
# Only a hang (network retries) may end a run here: far above any export's time, never a measure.
HANG_GUARD_S = 900


def fill_cache(hf_home: Path) -> torch.nn.Module:
    """Put weights of `MODEL` in a Hugging Face cache at `hf_home`; returns the model they
    are the weights of."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(11)
    model = timm.create_model("resnet18", pretrained=False)
    randomize_norms(model)
    repo = hf_home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors"
    )
    return model.eval()


def timmx(args: list[str], cwd: Path, hf_home: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"}
    }
    environment.update(HF_HOME=str(hf_home), **env)
    return subprocess.run(
        [sys.executable, "-m", "timmx", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


@pytest.mark.parametrize(
    "network",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": UNREACHABLE}],
    ids=["offline-set", "hub-unreachable"],
)
def test_cached_weights_load_offline(tmp_path: Path, network: dict[str, str]) -> None:
    model = fill_cache(tmp_path / "hf")
    args = ["export", "onnx", MODEL, "--pretrained", "--input-size", "3", "64", "64"]
    done = timmx([*args, "-o", "out.onnx"], tmp_path, tmp_path / "hf", **network)
    assert done.returncode == 0, done.stderr

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    session = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    actual = np.concatenate([session.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(2)])
    with torch.inference_mode():
        expected = model(x).numpy()
    assert_matches(actual, expected)


def test_cached_weights_make_no_request(tmp_path: Path) -> None:
    """With a hub that answers, cached weights are still taken from the cache, unasked."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Hub(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(f"{self.command} {self.path}")
            self.send_error(404)

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fill_cache(tmp_path / "hf")
        args = ["export", "onnx", MODEL, "--pretrained", "--input-size", "3", "64", "64"]
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        done = timmx([*args, "-o", "out.onnx"], tmp_path, tmp_path / "hf", HF_ENDPOINT=endpoint)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, done.stderr
    assert asked == []


@pytest.mark.parametrize(
    "network",
    [{"HF_ENDPOINT": UNREACHABLE}, {"HF_HUB_OFFLINE": "1"}],
    ids=["hub-unreachable", "offline-set"],
)
def test_missing_weights_fail_in_one_line(tmp_path: Path, network: dict[str, str]) -> None:
    fill_cache(tmp_path / "hf")  # another model's weights are there, not these
    args = ["export", "onnx", "resnet34.a1_in1k", "--pretrained", "-o", "out.onnx"]
    done = timmx(args, tmp_path, tmp_path / "hf", **network)

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and "resnet34.a1_in1k" in lines[0]
    assert "--checkpoint" in lines[0] and "HF_HOME" in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out.onnx").exists()
