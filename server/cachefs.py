"""Cache entries that can be trusted: built whole under a lock, sealed with a manifest, checked at every load.

An entry is a folder (a converted model, packed weights, a kernel library). It is built in a temporary
folder named `<entry>.tmp<pid>`; every file is flushed to disk and listed in `manifest.json` with its size
and SHA-256 (hardware-accelerated where the CPU has SHA extensions: ~60 ms for the default model's 92 MB of
packed weights), then the folder is renamed into place. A load checks the manifest first; a damaged entry
is moved aside (`<entry>.bad-<time>`, one kept per entry) and rebuilt once. Building holds an flock on
`.locks/<entry>.lock`, so servers starting together on a shared cache build each entry once. A full disk is
reported naming the directory and the space needed. Only the stdlib is imported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("seedstream.cache")

MANIFEST = "manifest.json"
HASH = "sha256"
TMP_LOCK = ".tmp.lock"  # writers hold it shared while their temp files exist; the start-up sweep, exclusive
_TMP = re.compile(r"\.tmp(\d+)$")
_BLOCK = 1 << 22
T = TypeVar("T")


class DamagedEntry(Exception):
    """A cached file that does not match its manifest or cannot be parsed."""

    def __init__(self, file: Path, why: str):
        super().__init__(f"{file}: {why}")
        self.file, self.why = file, why


class CacheError(RuntimeError):
    """The cache cannot be used (a full disk, an entry damaged again after its rebuild); the message names the
    file, the cause and the fix. A RuntimeError, so the server's start reports it and exits."""


def tmp_path(path: Path) -> Path:
    """The temporary name of `path` while this process writes it (the pid lets a later start sweep it)."""
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def file_digest(path: Path) -> str:
    digest = hashlib.new(HASH)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_file(path: Path, data: bytes) -> None:
    """Write a small file whole or not at all: a temp name, fsync, rename."""
    tmp = tmp_path(path)
    with _writing(path.parent):
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Hold `folder`'s sweep lock shared: no start-up sweep removes a temp file while it is written."""
    folder.mkdir(parents=True, exist_ok=True)
    with _flock(folder / TMP_LOCK, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def _flock(path: Path, how: int) -> Iterator[bool]:
    """flock `path` (created if absent); yields False when a non-blocking lock is held elsewhere."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a read-only cache: nothing is written there, so nothing to serialise
        log.debug("no lock %s (%s)", path, exc)
        yield True
        return
    try:
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def locked(entry: Path) -> contextlib.AbstractContextManager[bool]:
    """Build `entry` alone: an exclusive flock on `.locks/<entry>.lock` beside it (the kernel releases it when
    the process dies)."""
    locks = entry.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return _flock(locks / f"{entry.name}.lock", fcntl.LOCK_EX)


@contextlib.contextmanager
def new_entry(entry: Path, needed: Callable[[], int]) -> Iterator[Path]:
    """A temp folder to fill; when the block ends, each file is fsynced and listed in the manifest, and the
    folder renamed to `entry`. On any failure the temp folder is removed; a full disk raises CacheError."""
    tmp = tmp_path(entry)
    with _writing(entry.parent):
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            _seal(tmp)
            os.rename(tmp, entry)
            _fsync(entry.parent)
        except Exception as exc:
            if is_disk_full(exc):
                raise CacheError(disk_full_message(entry.parent, needed(), exc)) from exc
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _seal(folder: Path) -> None:
    """Flush every file of `folder` to disk and write its manifest (size and hash of each)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = [path.stat().st_size, file_digest(path)]
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"hash": HASH, "files": files}, indent=1))
    _fsync(manifest)
    _fsync(folder)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify(entry: Path) -> None:
    """Raise DamagedEntry naming the first file of `entry` that is missing, of another size or other bytes
    than its manifest says (or the manifest itself, when it is missing or unreadable)."""
    manifest = entry / MANIFEST
    with reading(manifest):
        listed = json.loads(manifest.read_text())
        files = [(str(name), int(size), str(digest)) for name, (size, digest) in listed["files"].items()]
        if listed["hash"] != HASH or not files:
            raise ValueError(f"hash {listed['hash']!r} and {len(files)} files (expected {HASH!r} and some)")
    for name, size, digest in files:
        path = entry / name
        try:
            actual = path.stat().st_size
        except OSError as exc:
            raise DamagedEntry(path, f"missing ({exc.strerror})") from exc
        if actual != size:
            raise DamagedEntry(path, f"{actual} bytes, the manifest says {size} (truncated or overwritten)")
        if file_digest(path) != digest:
            raise DamagedEntry(path, f"its bytes differ from the manifest's {HASH} (corrupted)")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Any failure to read or parse `path` becomes DamagedEntry naming it."""
    try:
        yield
    except DamagedEntry:
        raise
    except Exception as exc:
        raise DamagedEntry(path, f"cannot be read: {type(exc).__name__}: {exc}") from exc


def ensure(entry: Path, build: Callable[[Path], None], load: Callable[[Path], T], needed: Callable[[], int]) -> T:
    """`load(entry)` (which calls verify first), building the entry when absent (`build(tmp)` fills a temp
    folder; `needed()` estimates its bytes for a full disk's message) and rebuilding it once when damaged."""
    damaged: DamagedEntry | None = None
    for attempt in (1, 2):
        with locked(entry):
            if not entry.exists():
                try:
                    build_entry(entry, build, needed)
                except Exception as exc:
                    if damaged is None or isinstance(exc, CacheError):
                        raise
                    raise CacheError(_rebuild_failed(entry, damaged, exc)) from exc
        found = _inode(entry)
        try:
            return load(entry)
        except DamagedEntry as exc:
            if attempt == 2:
                raise CacheError(
                    f"{exc.file} is damaged again after rebuilding {entry}: {exc.why}. Check the disk, then "
                    f"remove the cache (`seedstream cache clear`, or delete {entry.parent})"
                ) from exc
            damaged = exc
            with locked(entry):
                if _inode(entry) == found:  # not already replaced by a concurrent start
                    aside = move_aside(entry)
                    log.warning(
                        "cache: %s is %s; moved the entry aside to %s and rebuilding it", exc.file, exc.why, aside
                    )
    raise AssertionError("unreachable")


def _rebuild_failed(entry: Path, damaged: DamagedEntry, exc: Exception) -> str:
    """The message of a start that found `entry` damaged and could not build it again."""
    return (
        f"{damaged.file} was damaged ({damaged.why}), and rebuilding {entry} failed: {type(exc).__name__}: {exc}. "
        "The entry is built from its source: check that the model's files are whole and readable (for the "
        "kernel library: that the C++ compiler, $CXX or g++, works), then start again"
    )


def build_entry(entry: Path, build: Callable[[Path], None], needed: Callable[[], int]) -> None:
    log.info("cache: building %s", entry)
    with new_entry(entry, needed) as tmp:
        build(tmp)


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def move_aside(entry: Path) -> Path:
    """Rename a damaged entry to `<entry>.bad-<time>` (kept for a look; an older one is removed first)."""
    for old in entry.parent.glob(entry.name + ".bad-*"):
        _remove(old)
    aside = entry.with_name(f"{entry.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}")
    os.rename(entry, aside)
    return aside


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep(folder: Path) -> list[Path]:
    """Remove the temp files and folders in `folder` left by processes that no longer run. Skipped while any
    process writes there (a process in another pid namespace on a shared volume has a pid we cannot check)."""
    if not folder.is_dir():
        return []
    removed = []
    with _flock(folder / TMP_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
        if not free:
            return []
        for path in folder.iterdir():
            match = _TMP.search(path.name)
            if match and int(match[1]) != os.getpid() and not pid_alive(int(match[1])):
                _remove(path)
                removed.append(path)
                log.info("cache: removed %s, left by process %s which no longer runs", path, match[1])
    return removed


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also as the text of errors that wrap it (safetensors' Rust IoError, a compiler's)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "StorageFull" in text or "Disk quota exceeded" in text


def disk_full_message(folder: Path, needed: int, cause: BaseException) -> str:
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    lines = [line for line in str(cause).splitlines() if "space" in line or "quota" in line] or [str(cause)]
    return (
        f"no space left on device in {folder}: the cache needs about {needed / 1e6:.0f} MB there ({free}; "
        f"{lines[0].strip()[:300]}). Free space there, or point SEEDSTREAM_CACHE at a volume with room; "
        "nothing half-written was left"
    )


def cache_root() -> Path:
    """$SEEDSTREAM_CACHE, else $XDG_CACHE_HOME/seedstream, else ~/.cache/seedstream."""
    root = os.environ.get("SEEDSTREAM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "seedstream"
    )
    return Path(root)


def cache_entries(root: Path) -> list[Path]:
    """The sealed (or damaged) entries under `root` and `root/kernels`: folders that are not temp, aside or locks."""
    found = []
    for folder in (root, root / "kernels"):
        if folder.is_dir():
            found += [
                p
                for p in sorted(folder.iterdir())
                if p.is_dir()
                and not p.name.startswith(".")
                and p.name not in ("kernels", "hashes")
                and not _TMP.search(p.name)
                and ".bad-" not in p.name
            ]
    return found


def verify_cache(root: Path, out: Callable[[str], object] = print) -> int:
    """`seedstream cache verify`: check every entry against its manifest; 0 when all are whole, else 1."""
    damaged = 0
    for entry in cache_entries(root):
        if not (entry / MANIFEST).exists():  # sealing writes it before the rename: an older version's entry
            out(f"unused   {entry} (no manifest: written by an older seedstream; `seedstream cache clear` removes it)")
            continue
        try:
            verify(entry)
            out(f"ok       {entry}")
        except DamagedEntry as exc:
            damaged += 1
            out(f"DAMAGED  {entry}: {exc.file}: {exc.why}")
    for leftover in sorted(p for f in (root, root / "kernels", root / "hashes") if f.is_dir() for p in f.iterdir()):
        if ".bad-" in leftover.name or _TMP.search(leftover.name):
            out(f"leftover {leftover} (moved aside or a temp file; `seedstream cache clear` removes it)")
    if damaged:
        out(f"{damaged} damaged: the next start moves each aside and rebuilds it, or run `seedstream cache clear`")
    return 1 if damaged else 0


def clear_cache(root: Path, out: Callable[[str], object] = print) -> int:
    """`seedstream cache clear`: remove everything under `root` (every model is converted again at its next
    start); refused while a server builds an entry there."""
    if not root.is_dir():
        out(f"{root}: no cache")
        return 0
    with _flock(root / TMP_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
        if not free:
            out(f"{root}: a server is writing to this cache now; try again once it has started")
            return 1
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        for path in root.iterdir():
            if path.name != TMP_LOCK:
                _remove(path)
    out(f"removed {root}'s contents ({size / 1e6:.0f} MB)")
    return 0
