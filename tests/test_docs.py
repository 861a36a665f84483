"""The documentation stays usable: the README is short, and every repository path it, docs/ and code
comments name exists.

A path is a relative path under one of the repository's top-level folders with a file extension
(`server/kernels/packing.py`, `docs/kernels.md`), written anywhere in README.md, CHANGELOG.md or docs/*.md,
or in a comment or docstring of the Python, C++ and shell files under the source folders. Markdown links
are checked too, relative to the page they are on, with their #anchor when they point at a Markdown page.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 350
TOP_FOLDERS = ("bench", "client", "constraints", "deploy", "docs", "proto", "sampler", "scripts", "server", "tests")
CODE_FOLDERS = ("server", "client", "sampler", "proto", "scripts", "bench", "tests")
SKIP_PARTS = {"node_modules", "__pycache__", "build"}
EXTENSIONS = "c|cc|conf|cpp|gguf|h|html|js|json|jsonl|md|mjs|pem|proto|py|pyi|sh|toml|txt|yaml|yml"
PATH = re.compile(rf"(?<![\w./~$-])(?:{'|'.join(TOP_FOLDERS)})/[\w./-]*?\.(?:{EXTENSIONS})(?![\w/])")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_comments(text: str) -> str:
    """The comments and docstrings of a Python file."""
    parts = [t.string for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node) or "")
    return "\n".join(parts)


def _comments(path: Path) -> str:
    text = path.read_text()
    if path.suffix == ".py":
        return _python_comments(text)
    if path.suffix == ".sh":
        return "\n".join(re.findall(r"(?:^|\s)(#.*)", text))
    return "\n".join(re.findall(r"//.*|/\*.*?\*/", text, flags=re.S))  # C and C++


def _code_files() -> list[Path]:
    return [
        p
        for folder in CODE_FOLDERS
        for p in sorted((ROOT / folder).rglob("*"))
        if p.suffix in (".py", ".sh", ".h", ".hpp", ".c", ".cc", ".cpp")
        and not SKIP_PARTS & set(p.relative_to(ROOT).parts)
        and not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
    ]


def _missing_paths(text: str) -> set[str]:
    return {m for m in PATH.findall(text) if not (ROOT / m.rstrip(".")).exists()}


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower().replace("`", "")).replace(" ", "-") for h in headings}


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): it is for users; move history to "
        "docs/benchmarks.md or CHANGELOG.md and details to docs/"
    )


def test_docs_name_existing_paths():
    missing = {f"{p.relative_to(ROOT)}: {m}" for p in _pages() for m in _missing_paths(p.read_text())}
    assert not missing, "the docs name paths that do not exist:\n" + "\n".join(sorted(missing))


def test_code_comments_name_existing_paths():
    # Parsing every file for its comments is slow: only files whose text names a missing path are parsed.
    suspects = [p for p in _code_files() if _missing_paths(p.read_text())]
    missing = {f"{p.relative_to(ROOT)}: {m}" for p in suspects for m in _missing_paths(_comments(p))}
    assert not missing, "comments name paths that do not exist:\n" + "\n".join(sorted(missing))


def test_doc_links_point_at_files_and_headings():
    broken = []
    for page in _pages():
        for target in LINK.findall(re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)
