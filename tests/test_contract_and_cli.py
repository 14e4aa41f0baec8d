"""The JSON contract and the light commands, which must not need torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from timmx.contract import SCHEMA_VERSION, ExportJob, parse_job, parse_result
from timmx.errors import ContractError


def job_dict(**changes) -> dict:
    job = ExportJob(backend="onnx", model={"name": "resnet18"}, output="out/m.onnx")
    data = job.model_dump(mode="json")
    data.update(changes)
    return data


def test_job_round_trips_through_json():
    job = parse_job(json.dumps(job_dict()))
    assert job.schema_version == SCHEMA_VERSION
    assert job.output == "out/m.onnx"  # workspace-relative, meaning the same in a container


def test_unknown_schema_version_is_refused_naming_both():
    with pytest.raises(ContractError, match=r"schema version 99 .* version 1"):
        parse_job(json.dumps(job_dict(schema_version=99)))
    with pytest.raises(ContractError, match="schema version 2"):
        parse_result(json.dumps({"schema_version": 2, "status": "success"}))


def test_unknown_field_is_refused():
    with pytest.raises(ContractError, match="unknown field 'colour'"):
        parse_job(json.dumps(job_dict(colour="blue")))
    data = job_dict()
    data["model"]["pretrainde"] = True
    with pytest.raises(ContractError, match=r"model\.pretrainde"):
        parse_job(json.dumps(data))


def test_schema_command_prints_json_schema(cli):
    for which in ("job", "result"):
        result = cli("schema", which)
        assert result.code == 0
        schema = json.loads(result.out)
        assert "schema_version" in schema["properties"]


def _imported_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().split(","))


@pytest.mark.parametrize(
    "argv", [["--help"], ["export", "onnx", "--help"], ["schema", "job"], ["doctor"]]
)
def test_light_commands_import_no_torch(argv):
    code = f"from timmx.cli.app import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    heavy = _imported_after(code) & {"torch", "timm", "numpy", "onnx", "onnxruntime"}
    assert heavy == set()


def test_doctor_lists_backends_and_docker(cli):
    result = cli("doctor", "--json")
    assert result.code == 0
    report = json.loads(result.out)
    names = {row["backend"]: row for row in report["backends"]}
    assert names["onnx"]["in_process"] is True
    assert {"torch-export", "torchscript"} <= set(names)
    assert "docker" in report


def test_info_and_list(cli):
    result = cli("info", "resnet18", "--json")
    assert result.code == 0
    info = json.loads(result.out)
    assert info["input_size"] == [3, 224, 224]
    assert info["num_classes"] == 1000
    assert cli("info", "mobileone_s0", "--json").out.count('"reparameterizable": true') == 1

    listed = cli("list", "resnet1").out.split()
    assert "resnet18" in listed and all("resnet1" in n for n in listed)
    assert cli("list", "resnet1?").out.split()[0].startswith("resnet1")


def test_info_unknown_model(cli):
    result = cli("info", "resnet_18")
    assert result.code == 2
    assert "did you mean" in result.err
