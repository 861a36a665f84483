"""The server's layers point one way: the two fronts (server/rpc: gRPC, server/http: OpenAI-style JSON) are
siblings over server/service, which imports neither front nor either transport. Read from the source with
`ast`, every import counted (inside functions too), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"

# package folder -> the module prefixes its files must not import
FORBIDDEN = {
    "http": ("seedstream.server.rpc", "grpc"),
    "rpc": ("seedstream.server.http", "aiohttp"),
    "service": ("seedstream.server.rpc", "seedstream.server.http", "grpc", "aiohttp"),
}


def imported_modules(source: str, package: str) -> set[str]:
    """The absolute names of the modules `source` imports (and, for `from m import n`, of m.n too, since n
    may be a module), with relative imports resolved against `package` (the file's own package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _violations(folder: str) -> list[str]:
    package = f"seedstream.server.{folder}"
    out = []
    for path in sorted((SERVER / folder).glob("*.py")):
        for module in sorted(imported_modules(path.read_text(), package)):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[folder]):
                out.append(f"{path.relative_to(ROOT)} imports {module}")
    return out


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_fronts_are_siblings_over_the_service_layer(folder):
    assert (SERVER / folder / "__init__.py").exists()
    assert not _violations(folder)


def test_relative_and_lazy_imports_are_resolved():
    """The reader sees what a front could sneak in: relative imports, imports inside functions."""
    source = "from ..rpc import convert\nfrom . import parse\ndef f():\n    from seedstream.server.rpc.auth import x\n"
    found = imported_modules(source, "seedstream.server.http")
    assert {"seedstream.server.rpc.convert", "seedstream.server.http.parse", "seedstream.server.rpc.auth"} <= found
