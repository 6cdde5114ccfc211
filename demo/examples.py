"""Example WLI/NBI pairs for the demo, drawn by the synthetic generator at startup.

Nothing is downloaded or bundled: the pairs are deterministic per seed, so they
are written once into the endofuse cache and reused by later starts.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2

from endofuse.model.synthetic import make_pair

EXAMPLE_SEEDS = (0, 1, 2)
EXAMPLE_SIZE = (360, 400)  # (H, W): endoscope-like aspect, small enough to segment instantly on CPU


def default_examples_dir() -> Path:
    from endofuse.realtime.engines.cache import cache_folder

    return cache_folder("demo-examples")  # created; one line when the cache cannot be written


def _write_png_atomically(path: Path, image) -> None:
    # Two demos starting at once must never see a half-written example.
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        if not cv2.imwrite(tmp, image):
            raise OSError(f"could not write example image {path}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_example_pairs(folder: Path | None = None, seeds=EXAMPLE_SEEDS, size=EXAMPLE_SIZE) -> list[tuple[Path, Path]]:
    """Write (or reuse) one WLI/NBI PNG pair per seed; returns their paths in seed order."""
    folder = Path(folder) if folder is not None else default_examples_dir()
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for seed in seeds:
        wli_path = folder / f"synthetic_{seed}_{size[0]}x{size[1]}_wli.png"
        nbi_path = folder / f"synthetic_{seed}_{size[0]}x{size[1]}_nbi.png"
        if not (wli_path.is_file() and nbi_path.is_file()):
            wli, nbi, _mask = make_pair(seed, size=size)
            _write_png_atomically(wli_path, wli)
            _write_png_atomically(nbi_path, nbi)
        pairs.append((wli_path, nbi_path))
    return pairs
