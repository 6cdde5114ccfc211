"""The files of a run folder besides checkpoints: config.json, log.csv, curves.png (rank 0 only)."""
from __future__ import annotations

import csv
import io
import json
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from endofuse.outputs import atomic_write_bytes, atomic_write_text

LOG_COLUMNS = (
    "epoch", "step", "lr", "w_fd", "loss", "seg", "da", "align", "diff", "orth_wli", "orth_nbi", "mi", "dacl", "fd",
    "cgns", "mir", "relation", "prototype", "modality", "dtm_relation", "dtm_prototype",
    "val_dice", "val_iou", "val_sensitivity", "val_specificity", "seconds", "pairs_per_s",
)  # fmt: skip
LOSS_CURVES = ("loss", "seg", "fd", "mi", "dacl", "da")


def write_text_atomic(path: Path, text: str) -> None:
    """Checked atomic write: a full disk is a one-line WriteError naming the file, the old file kept."""
    atomic_write_text(path, text)


def versions() -> dict[str, str]:
    import cv2
    import numpy
    import torch

    from endofuse import __version__

    return {"endofuse": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": numpy.__version__, "opencv": cv2.__version__, "platform": platform.platform(),
            "cuda": torch.version.cuda or "none"}


def write_config(run: Path, config: dict) -> None:
    write_text_atomic(run / "config.json", json.dumps({**config, "versions": versions()}, indent=2, default=str))


def write_log(run: Path, history: Sequence[dict]) -> None:
    """Rewrite log.csv from the whole history (kept in the checkpoint, so a resumed run continues it)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    write_text_atomic(run / "log.csv", buf.getvalue())


def write_curves(run: Path, history: Sequence[dict]) -> None:
    """curves.png: training loss terms (log scale) and validation Dice per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    for key in LOSS_CURVES:
        values = [row.get(key) for row in history]
        if any(v is not None and v > 0 for v in values):
            ax_loss.plot(epochs, [v if v and v > 0 else float("nan") for v in values], label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training losses")
    ax_loss.legend(fontsize=8)
    ax_dice.plot(epochs, [row.get("val_dice") for row in history], marker="o")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_title("validation Dice")
    ax_dice.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(run / "curves.png", buffer.getvalue())  # checked: a full disk is one line
