"""The generated protobuf code matches the .proto (one command regenerates it)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_proto.py"


def test_generated_code_is_up_to_date():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"run `python scripts/gen_proto.py` and commit the result\n{done.stderr}"


def test_check_detects_drift(tmp_path, monkeypatch):
    """The check is not vacuous: edit a copy of the contract and it fails, regenerate and it passes."""
    spec = importlib.util.spec_from_file_location("gen_proto_under_test", SCRIPT)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    proto_root = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", proto_root)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "PROTO_ROOT", proto_root)
    assert gen.main(["--check"]) == 0

    contract = proto_root / "seedstream" / "v1" / "textgen.proto"
    text = contract.read_text().replace(
        "message GetModelInfoRequest {}", "message GetModelInfoRequest { bool verbose = 1; }"
    )
    contract.write_text(text)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0


def test_generated_modules_import_under_the_namespace():
    from seedstream.v1 import protocol, textgen_pb2, textgen_pb2_grpc

    service = textgen_pb2.DESCRIPTOR.services_by_name["TextGeneration"]
    assert service.full_name == "seedstream.v1.TextGeneration" == protocol.SERVICE_NAME
    assert {m.name for m in service.methods} == {
        "Generate",
        "GenerateStream",
        "Tokenize",
        "GetModelInfo",
        "Score",
        "ScoreRolling",
    }
    assert hasattr(textgen_pb2_grpc, "TextGenerationStub")
    assert (ROOT / "proto" / "seedstream" / "v1" / "textgen_pb2.pyi").exists()


def test_optional_fields_are_the_protos():
    """seedstream.v1.protocol's list of GenerateRequest's `optional` fields, which the client sets and the
    server reads, is the proto's: a proto3 `optional` field is the one member of a synthetic oneof `_<name>`."""
    from seedstream.v1 import protocol, textgen_pb2

    fields = textgen_pb2.GenerateRequest.DESCRIPTOR.fields
    optional = [f.name for f in fields if f.containing_oneof is not None and f.containing_oneof.name == "_" + f.name]
    assert sorted(protocol.OPTIONAL_GENERATE_FIELDS) == sorted(optional)
    assert set(protocol.OPTIONAL_SAMPLING_FIELDS) < set(optional)
