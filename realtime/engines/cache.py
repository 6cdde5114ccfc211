"""Where exported models are cached, and the hashes that key them.

Exports and engine builds are slow (seconds for ONNX, minutes for TensorRT),
so their results are kept under `~/.cache/endofuse` (or `$ENDOFUSE_CACHE`) in
folders named after everything that changes the result: the checkpoint's
content hash and the versions of the tools that produced the file.

An entry is used only when complete: `build_entry` writes `complete.json`
(each file's size and sha256) last and atomically, after the files, so an
export cut short (a crash, Ctrl-C, a full disk) or a file damaged later is
noticed on the next open and built again instead of failing every run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.outputs import atomic_file, reason

STAMP_NAME = "complete.json"


def cache_dir() -> Path:
    """The cache root: `$ENDOFUSE_CACHE`, else `~/.cache/endofuse`."""
    root = os.environ.get("ENDOFUSE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "endofuse"


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints can be ~1 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def cache_folder(*parts: str) -> Path:
    """`cache_dir()/parts...`, created; one line naming the cache (and how to move it) when it cannot be written."""
    root = cache_dir()
    folder = root.joinpath(*parts)
    where = f"ENDOFUSE_CACHE '{root}'" if os.environ.get("ENDOFUSE_CACHE") else f"the engine cache '{root}'"
    blocking = next((p for p in (root, *root.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise EndofuseError(f"{where}: '{blocking}' is a file, not a folder; set ENDOFUSE_CACHE to a writable "
                            "folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EndofuseError(f"{where}: cannot create '{folder}' ({reason(exc)}); set ENDOFUSE_CACHE to a "
                            "writable folder") from exc
    if not os.access(folder, os.W_OK | os.X_OK):  # a read-only mount or folder: fail here, not mid-export
        raise EndofuseError(f"{where}: '{folder}' is not writable; set ENDOFUSE_CACHE to a writable folder")
    return folder


def cache_entry(kind: str, *key_parts: object) -> Path:
    """A folder `cache_dir()/kind/<key>` for one cached artefact; created on demand."""
    key = "-".join(_safe(str(p)) for p in key_parts)
    return cache_folder(kind, key)


def _entry_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != STAMP_NAME)


def entry_complete(folder: Path) -> bool:
    """True when `folder` holds the files its `complete.json` lists, each of the recorded size and sha256."""
    try:
        files = json.loads((folder / STAMP_NAME).read_text())["files"]
        names = {p.relative_to(folder).as_posix() for p in _entry_files(folder)}
        if not files or set(files) != names:
            return False
        for name, recorded in files.items():
            path = folder / name
            if path.stat().st_size != recorded["bytes"] or file_sha256(path) != recorded["sha256"]:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def build_entry(folder: Path, build: Callable[[], object], usable: bool = True) -> None:
    """Run `build` (it writes the entry's files into `folder`) unless `folder` holds a complete entry.

    `usable=False` rebuilds a complete entry too (the caller found it does not fit). Whatever a damaged
    or unfinished entry left is removed first; the stamp is written last.
    """
    if usable and entry_complete(folder):
        return
    for leftover in folder.iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
    build()
    files = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _entry_files(folder)}
    with atomic_file(folder / STAMP_NAME, "w", encoding="utf-8") as f:
        json.dump({"files": files}, f, indent=1)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+]", "_", text)
