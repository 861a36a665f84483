#!/usr/bin/env python3
"""Generate the Python protobuf/gRPC code for seedstream's contract.

    python scripts/gen_proto.py           # (re)write proto/seedstream/v1/*_pb2*.py(i)
    python scripts/gen_proto.py --check   # exit 1 if the committed files drift from the .proto

The generated modules live next to their .proto files, under the import path
`seedstream.v1` (protoc runs with `-I proto`). Uses grpc_tools.protoc, i.e. the
grpcio-tools version installed; the generated code records that version, so a
different grpcio-tools can itself show up as drift. Regenerate and commit.
"""

from __future__ import annotations

import argparse
import difflib
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generated_names(proto: Path) -> list[Path]:
    rel = proto.relative_to(PROTO_ROOT)
    return [rel.with_name(rel.stem + s) for s in SUFFIXES]


def generate(out_dir: Path) -> None:
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:
        sys.exit("gen_proto: grpcio-tools is missing: pip install 'seedstream[test]' (or grpcio-tools)")
    include = Path(grpc_tools.__file__).parent / "_proto"  # well-known types
    protos = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    if not protos:
        sys.exit(f"gen_proto: no .proto files under {PROTO_ROOT}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        sys.exit(f"gen_proto: protoc failed with exit code {code}")


def _clip(line: str, width: int = 160) -> str:
    return line if len(line) <= width else line[:width] + " ..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if the generated files are out of date"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        generate(tmp_dir if args.check else PROTO_ROOT)
        if not args.check:
            for proto in proto_files():
                for name in generated_names(proto):
                    print(f"wrote {PROTO_ROOT.relative_to(ROOT) / name}")
            return 0
        drift = []
        for proto in proto_files():
            for name in generated_names(proto):
                fresh, committed = tmp_dir / name, PROTO_ROOT / name
                if not committed.exists():
                    drift.append(f"missing: {committed.relative_to(ROOT)}")
                elif not filecmp.cmp(fresh, committed, shallow=False):
                    diff = difflib.unified_diff(
                        committed.read_text().splitlines(),
                        fresh.read_text().splitlines(),
                        str(committed.relative_to(ROOT)),
                        "regenerated",
                        lineterm="",
                        n=1,
                    )
                    drift.append("\n".join(_clip(line) for line in list(diff)[:40]))
        if drift:
            print("generated protobuf code is out of date; run: python scripts/gen_proto.py", file=sys.stderr)
            for item in drift:
                print(item, file=sys.stderr)
            return 1
        print("generated protobuf code is up to date")
        return 0


if __name__ == "__main__":
    sys.exit(main())
