"""A case library for retrieval: unit image embeddings + metadata + a faiss inner-product index.

Folder layout: `gallery.json` (model, classes, checkpoint path and SHA-256,
count, and the names and SHA-256 of the data files), and one generation of data
files: `embeddings-G.npy` (N, E) float32 unit rows, `items-G.json` (per row:
image_path, label, caption, split, sha256 of the image file), `index-G.faiss`
(exact `IndexFlatIP`: cosine similarity on unit vectors). The checksums bind the
three files to each other: a data file swapped in from another gallery (same
rows and width) is refused by name instead of returning wrong neighbours.

Appending writes generation G+1 beside G, then replaces `gallery.json` (one
atomic rename: the commit point), then deletes generation G. A crash or a full
disk at any point leaves `gallery.json` naming a complete generation, old or
new; leftovers of an interrupted append are removed by the next one. One
`endofuse index` at a time holds the folder's lock. Appending needs the same
checkpoint (embeddings of two checkpoints are not comparable); an image already
in the gallery is skipped when its file, label and caption are unchanged, and
its row is replaced in place when one of them changed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from endofuse.errors import EndofuseError
from endofuse.outputs import atomic_write_bytes, dumps_json, reason, write_json

FORMAT = "endofuse-gallery"
VERSION = 3  # 3: data-file checksums in gallery.json, image checksums in items
META = "gallery.json"
LOCK = ".gallery.lock"
CHANGES = ("sha256", "label", "caption")  # an indexed image whose row differs in one of these is re-indexed
DATA_FILE = re.compile(r"^(embeddings|items|index)-\d+\.(npy|json|faiss)$")


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _faiss():
    try:
        import faiss
    except ImportError as exc:
        raise EndofuseError("retrieval needs faiss: pip install faiss-cpu==1.15.1") from exc
    return faiss


def data_names(generation: int) -> dict[str, str]:
    return {"embeddings": f"embeddings-{generation}.npy", "items": f"items-{generation}.json",
            "index": f"index-{generation}.faiss"}


class _Replaced(Exception):
    """gallery.json moved on to a new generation while its data files were being read."""


def _meta_changed(meta_path: Path, meta: dict) -> bool:
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")).get("generation") != meta.get("generation")
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Exclusive lock on the gallery folder for one append (a second `index` into it is one line)."""
    folder = Path(folder)
    try:
        handle = open(folder / LOCK, "a")  # noqa: SIM115 - held for the whole append
    except OSError as exc:
        raise EndofuseError(f"cannot lock gallery '{folder}': {reason(exc)}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EndofuseError(f"{folder}: another endofuse index is writing this gallery; "
                                    "wait for it to finish") from None
            raise
        yield
    finally:
        handle.close()


@dataclass
class Gallery:
    folder: Path
    meta: dict
    embeddings: np.ndarray
    items: list[dict]
    index_bytes: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, folder: Path) -> Gallery:
        """Read the generation `gallery.json` names; one line for anything missing or damaged.

        An append that commits while this reads deletes the generation being read:
        then the new one is read instead.
        """
        try:
            return cls._open(Path(folder))
        except _Replaced:
            return cls._open(Path(folder))

    @classmethod
    def _open(cls, folder: Path) -> Gallery:
        meta_path = folder / META
        if not meta_path.is_file():
            raise EndofuseError(f"{folder}: not a gallery (no {META}); build one with endofuse index")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise EndofuseError(f"{meta_path}: not readable JSON ({exc}); rebuild the gallery") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise EndofuseError(f"{meta_path}: not an endofuse gallery")
        if meta.get("version") != VERSION or not isinstance(meta.get("files"), dict):
            raise EndofuseError(f"{meta_path}: gallery version {meta.get('version')} is not the one this endofuse "
                                f"reads ({VERSION}); rebuild it with endofuse index")
        files = {k: folder / meta["files"].get(k, "") for k in ("embeddings", "items", "index")}
        checksums = meta.get("sha256") if isinstance(meta.get("sha256"), dict) else {}

        def read(kind: str) -> bytes:
            data = files[kind].read_bytes()
            if bytes_sha256(data) != checksums.get(kind):
                raise EndofuseError(f"{folder}: {files[kind].name} is not the file {META} was written with (its "
                                    f"SHA-256 differs: replaced or edited by hand?); rebuild the gallery")
            return data

        try:
            embeddings = np.load(io.BytesIO(read("embeddings")), allow_pickle=False)
            items = json.loads(read("items").decode("utf-8"))
            index_bytes = np.frombuffer(read("index"), dtype=np.uint8)
        except FileNotFoundError as exc:
            if _meta_changed(meta_path, meta):
                raise _Replaced from None
            raise EndofuseError(f"{folder}: {Path(exc.filename).name} named by {META} is missing "
                                f"(deleted by hand?); rebuild the gallery") from None
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise EndofuseError(f"{folder}: a data file is damaged ({exc}); rebuild the gallery") from None
        if not (len(items) == len(embeddings) == meta.get("count")):
            raise EndofuseError(f"{folder}: {META} counts {meta.get('count')} rows, {files['items'].name} "
                                f"{len(items)}, {files['embeddings'].name} {len(embeddings)}; rebuild the gallery")
        return cls(folder, meta, embeddings, items, index_bytes)

    @classmethod
    def empty(cls, folder: Path, checkpoint: Path, model_name: str, classes: list[str], dim: int) -> Gallery:
        meta = {"format": FORMAT, "version": VERSION, "checkpoint": str(Path(checkpoint).resolve()),
                "checkpoint_sha256": file_sha256(checkpoint), "model": model_name, "classes": list(classes),
                "embed_dim": dim, "count": 0, "generation": 0, "files": {}}
        return cls(Path(folder), meta, np.zeros((0, dim), np.float32), [])

    def check_checkpoint(self, checkpoint: Path) -> None:
        if file_sha256(checkpoint) != self.meta["checkpoint_sha256"]:
            raise EndofuseError(f"{self.folder}: built with another checkpoint ({self.meta['checkpoint']}); "
                                f"append with that one or index into a new --out")

    def add(self, embeddings: np.ndarray, items: list[dict]) -> tuple[int, int]:
        """Merge rows in memory (`save` writes them); returns (appended, replaced).

        A new image_path is appended; a known one whose file (`sha256`), label or caption
        changed replaces its row in place, so no stale embedding or label stays; an
        unchanged one is skipped.
        """
        row_of = {item["image_path"]: row for row, item in enumerate(self.items)}
        appended, replaced, new_rows = 0, 0, []
        for i, item in enumerate(items):
            row = row_of.get(item["image_path"])
            if row is None:
                row_of[item["image_path"]] = len(self.items) + len(new_rows)
                new_rows.append(i)
                appended += 1
            elif row >= len(self.items):
                continue  # listed twice in this call (CSVs are checked for that before)
            elif any(self.items[row].get(key) != item.get(key) for key in CHANGES):
                self.embeddings[row] = embeddings[i]
                self.items[row] = item
                replaced += 1
        if new_rows:
            self.embeddings = np.concatenate([self.embeddings, embeddings[new_rows].astype(np.float32)])
            self.items.extend(items[i] for i in new_rows)
        return appended, replaced

    def save(self) -> None:
        """Write the next generation, commit it by replacing gallery.json, then drop the old files.

        Call under `locked(folder)`. A failure before the commit leaves the
        previous gallery as it was (a WriteError naming the file).
        """
        faiss = _faiss()
        self.folder.mkdir(parents=True, exist_ok=True)
        index = faiss.IndexFlatIP(self.embeddings.shape[1])
        index.add(np.ascontiguousarray(self.embeddings, dtype=np.float32))
        generation = int(self.meta.get("generation", 0)) + 1
        names = data_names(generation)
        buf = io.BytesIO()
        np.save(buf, self.embeddings, allow_pickle=False)
        self.index_bytes = faiss.serialize_index(index)
        data = {"embeddings": buf.getvalue(), "items": dumps_json(self.items).encode("utf-8"),
                "index": self.index_bytes.tobytes()}
        for kind, content in data.items():
            atomic_write_bytes(self.folder / names[kind], content)
        meta = {**self.meta, "count": len(self.items), "generation": generation, "files": names,
                "sha256": {kind: bytes_sha256(content) for kind, content in data.items()}}
        write_json(self.folder / META, meta)  # the commit point
        self.meta = meta
        self.remove_stale()

    def remove_stale(self) -> None:
        """Delete data files `gallery.json` does not name (the previous generation, interrupted appends)."""
        current = set(self.meta.get("files", {}).values())
        for path in self.folder.iterdir():
            if DATA_FILE.match(path.name) and path.name not in current:
                with contextlib.suppress(OSError):  # a leftover is harmless; the next append retries
                    os.unlink(path)

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Top-k rows per unit query vector: {image_path, label, score} best first."""
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(self.index_bytes)
        except RuntimeError as exc:
            raise EndofuseError(f"{self.folder}: {self.meta['files']['index']} is not a faiss index ({exc}); "
                                f"rebuild the gallery") from None
        if index.ntotal != len(self.items):
            raise EndofuseError(f"{self.folder}: {self.meta['files']['index']} holds {index.ntotal} rows, "
                                f"{self.meta['files']['items']} {len(self.items)}; rebuild the gallery")
        k = min(k, len(self.items))
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[{"image_path": self.items[j]["image_path"], "label": self.items[j]["label"], "score": float(s)}
                 for s, j in zip(row_s, row_i, strict=True) if j >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)]
