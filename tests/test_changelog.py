"""CHANGELOG.md names every version that decides a token stream, at the value the code has now.

A change that can alter a stream bumps one of these; the bump must come with a changelog entry that
says why. The constants are read from the source (not imported), so a module that moves keeps its check.
"""

from __future__ import annotations

import ast
import re
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Changes that can alter token streams"
# Each version that can change a stream, and the folder whose modules define it.
STREAM_VERSIONS = {
    "SAMPLER_VERSION": "sampler",
    "ENGINE_ALGORITHM": "server/engine",
    "CACHE_FORMAT": "server/engine",
    "KERNEL_VERSION": "server/kernels",
    "PACK_LAYOUT": "server/kernels",
    "SEED_POLICY": "client",
}


def _definitions(name: str, folder: str) -> list[tuple[Path, object]]:
    """(file, value) of every module-level `name = <literal>` under folder."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            target = (
                node.targets[0]
                if isinstance(node, ast.Assign) and len(node.targets) == 1
                else node.target
                if isinstance(node, ast.AnnAssign)
                else None
            )
            if isinstance(target, ast.Name) and target.id == name and node.value is not None:
                found.append((path, ast.literal_eval(node.value)))
    return found


def _value(name: str, folder: str) -> object:
    found = _definitions(name, folder)
    assert len(found) == 1, f"{name}: expected one definition under {folder}/, found {found}"
    return found[0][1]


def _stream_entries() -> str:
    """The entries (list items) of the section, joined: the prose around them does not count."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert SECTION in text, f"CHANGELOG.md has no section {SECTION!r}"
    section = re.split(r"^## ", text.split(SECTION, 1)[1], maxsplit=1, flags=re.M)[0]
    items = re.findall(r"^- .*?(?=^- |\Z)", section, flags=re.M | re.S)
    assert items, f"CHANGELOG.md has no entries under {SECTION!r}"
    return "\n".join(items)


@pytest.mark.parametrize("name", sorted(STREAM_VERSIONS))
def test_every_stream_version_has_a_changelog_entry(name):
    value = _value(name, STREAM_VERSIONS[name])
    assert f'{name} = "{value}"' in _stream_entries(), (
        f'{name} is "{value}" but CHANGELOG.md does not name `{name} = "{value}"` under "{SECTION[3:]}": '
        "add an entry saying what changed and why"
    )


def test_every_engine_version_is_in_the_changelog():
    """The engine_version strings the engine reports today: the torch path's and the kernels' per format."""
    from seedstream.server.engine.kernel_model import KernelModel
    from seedstream.server.kernels.packing import PRECISION  # the weight formats the kernels compute in

    algorithm = _value("ENGINE_ALGORITHM", "server/engine")
    # Engine.__init__'s forward tag for the torch path (the kernels give their own, version_tag).
    tiles = (_value(n, "server/engine") for n in ("ROW_TILE", "QUERY_TILE", "KEY_BLOCK"))
    torch_tag = "tile{}.attn{}x{}".format(*tiles)
    kernel_tags = [
        KernelModel.version_tag.fget(
            types.SimpleNamespace(weight_format=fmt, kv_dtype=kv, activations=act, uses_tanh=tanh)
        )
        for tanh in (False, True)  # a model with GELU-tanh or soft caps (Gemma) names the kernels' tanh
        for fmt in PRECISION
        for kv in (torch.float32, torch.bfloat16)  # --kv-cache-dtype
        for act in (("float32", "int8") if fmt != "f32" else ("float32",))  # --activations (int8: quantised weights)
    ]
    entries = _stream_entries()
    for tag in [torch_tag, torch_tag + ".kvbf16", *kernel_tags]:
        version = f"{algorithm}.{tag}"
        assert f"`{version}`" in entries, f"engine_version `{version}` is not named in CHANGELOG.md: add an entry"
