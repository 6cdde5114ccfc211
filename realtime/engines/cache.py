"""Where exported models are cached, and the hashes that key them.

Exports and engine builds are slow (seconds for ONNX, minutes for TensorRT),
so their results are kept under `~/.cache/endofuse` (or `$ENDOFUSE_CACHE`) in
folders named after everything that changes the result: the checkpoint's
content hash and the versions of the tools that produced the file.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


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


def cache_entry(kind: str, *key_parts: object) -> Path:
    """A folder `cache_dir()/kind/<key>` for one cached artefact; created on demand."""
    key = "-".join(_safe(str(p)) for p in key_parts)
    folder = cache_dir() / kind / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+]", "_", text)
