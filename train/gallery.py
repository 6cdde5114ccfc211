"""A case library for retrieval: unit image embeddings + metadata + a faiss inner-product index.

Folder layout: `gallery.json` (model, classes, checkpoint path and SHA-256, count),
`embeddings.npy` (N, E) float32 unit rows, `items.json` (per row: image_path,
label, caption, split), `index.faiss` (exact `IndexFlatIP`: cosine similarity on
unit vectors). Appending needs the same checkpoint (embeddings of two
checkpoints are not comparable); images already in the gallery are skipped.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endofuse.errors import EndofuseError
from endofuse.outputs import atomic_write_bytes, write_json

FORMAT = "endofuse-gallery"
FILES = ("gallery.json", "embeddings.npy", "items.json", "index.faiss")


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


@dataclass
class Gallery:
    folder: Path
    meta: dict
    embeddings: np.ndarray
    items: list[dict]

    @classmethod
    def open(cls, folder: Path) -> Gallery:
        folder = Path(folder)
        missing = [n for n in FILES if not (folder / n).is_file()]
        if missing:
            raise EndofuseError(f"{folder}: not a gallery (missing {', '.join(missing)}); "
                                f"build one with endofuse index")
        meta = json.loads((folder / "gallery.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise EndofuseError(f"{folder / 'gallery.json'}: not an endofuse gallery")
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        items = json.loads((folder / "items.json").read_text(encoding="utf-8"))
        if not (len(items) == len(embeddings) == meta.get("count")):
            raise EndofuseError(f"{folder}: gallery.json counts {meta.get('count')} rows, items.json {len(items)}, "
                                f"embeddings.npy {len(embeddings)} (an interrupted write?); "
                                f"rebuild the gallery")
        return cls(folder, meta, embeddings, items)

    @classmethod
    def empty(cls, folder: Path, checkpoint: Path, model_name: str, classes: list[str], dim: int) -> Gallery:
        meta = {"format": FORMAT, "version": 1, "checkpoint": str(Path(checkpoint).resolve()),
                "checkpoint_sha256": file_sha256(checkpoint), "model": model_name, "classes": list(classes),
                "embed_dim": dim, "count": 0}
        return cls(Path(folder), meta, np.zeros((0, dim), np.float32), [])

    def check_checkpoint(self, checkpoint: Path) -> None:
        if file_sha256(checkpoint) != self.meta["checkpoint_sha256"]:
            raise EndofuseError(f"{self.folder}: built with another checkpoint ({self.meta['checkpoint']}); "
                                f"append with that one or index into a new --out")

    def add(self, embeddings: np.ndarray, items: list[dict]) -> int:
        """Append rows whose image_path is new; returns how many were added."""
        known = {item["image_path"] for item in self.items}
        keep = [i for i, item in enumerate(items) if item["image_path"] not in known]
        if keep:
            self.embeddings = np.concatenate([self.embeddings, embeddings[keep].astype(np.float32)])
            self.items.extend(items[i] for i in keep)
        return len(keep)

    def save(self) -> None:
        faiss = _faiss()
        self.folder.mkdir(parents=True, exist_ok=True)
        index = faiss.IndexFlatIP(self.embeddings.shape[1])
        index.add(np.ascontiguousarray(self.embeddings, dtype=np.float32))
        buf = io.BytesIO()
        np.save(buf, self.embeddings, allow_pickle=False)
        atomic_write_bytes(self.folder / "embeddings.npy", buf.getvalue())
        write_json(self.folder / "items.json", self.items)
        atomic_write_bytes(self.folder / "index.faiss", faiss.serialize_index(index).tobytes())
        # written last: a gallery whose gallery.json count disagrees was interrupted mid-write
        write_json(self.folder / "gallery.json", {**self.meta, "count": len(self.items)})

    def search(self, queries: np.ndarray, k: int) -> list[list[dict]]:
        """Top-k rows per unit query vector: {image_path, label, score} best first."""
        faiss = _faiss()
        index = faiss.deserialize_index(np.fromfile(self.folder / "index.faiss", dtype=np.uint8))
        if index.ntotal != len(self.items):
            raise EndofuseError(f"{self.folder}: index.faiss holds {index.ntotal} rows, items.json {len(self.items)}; "
                                f"rebuild the gallery")
        k = min(k, len(self.items))
        scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return [[{"image_path": self.items[j]["image_path"], "label": self.items[j]["label"], "score": float(s)}
                 for s, j in zip(row_s, row_i, strict=True) if j >= 0]
                for row_s, row_i in zip(scores, ids, strict=True)]
