"""Score a classifier on a split: accuracy, macro-F1, per-class table, i2i / t2i retrieval.

Retrieval follows the paper's protocol on the test split: the gallery is the
split's images; image-to-image queries every image against the others (itself
left out), text-to-image queries every row's caption (the class's first prompt
when the row has none); a hit is a gallery image of the query's label.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from endofuse.model.entrep import EntrepModel
from endofuse.outputs import atomic_write_bytes, finite_or_none, write_json
from endofuse.train.classify import embed_images, embed_texts, prompts_of
from endofuse.train.classify_data import ImageDataset, load_classify_split
from endofuse.train.classify_metrics import classification_metrics, first_hit_ranks, retrieval_metrics


def evaluate_classifier(model: EntrepModel, data: Path, split: str = "test", records=None) -> dict:
    """The metrics of `model` on `data`'s split (`records`: that split, already loaded and checked)."""
    records = records if records is not None else load_classify_split(data, split, model.classes)
    dataset = ImageDataset(records, model.img_size, model.classes, prompts_of(model))
    emb, probs = embed_images(model, dataset)
    labels = np.array([dataset.index[r.label] for r in records])
    pred = probs.argmax(1)
    metrics = classification_metrics(labels, pred, model.classes)
    metrics["i2i"] = retrieval_metrics(first_hit_ranks(emb @ emb.T, labels, labels, exclude_self=True))
    captions = [dataset.caption(i) for i in range(len(records))]
    text = embed_texts(model, captions)
    metrics["t2i"] = retrieval_metrics(first_hit_ranks(text @ emb.T, labels, labels))
    metrics["per_image"] = [
        {"image_path": str(r.image), "label": r.label, "predicted": model.classes[int(p)],
         "confidence": float(probs[i, p])} for i, (r, p) in enumerate(zip(records, pred, strict=True))]
    metrics.update({"classes": list(model.classes), "images": len(records)})
    return metrics


def write_confusion_png(path: Path, matrix: list[list[int]], classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2.5, 1.2 * len(classes) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())  # checked: a full disk is one line naming the file


def summary(metrics: dict) -> str:
    lines = [f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  ({metrics['images']} images)"]
    for key in ("i2i", "t2i"):
        m = metrics[key]
        lines.append(f"{key}: R@1 {m['recall@1']:.4f}  R@5 {m['recall@5']:.4f}  MRR {m['mrr']:.4f}")
    lines.append(f"{'class':<20} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<20} {row['precision']:>9.4f} {row['recall']:>7.4f} {row['f1']:>7.4f} "
                     f"{row['support']:>8d}")
    return "\n".join(lines)


def write_metrics(out: Path, metrics: dict) -> None:
    """metrics.json (strict JSON) and confusion_matrix.png into an already prepared `out`."""
    write_json(out / "metrics.json", finite_or_none(metrics))  # a NaN (a broken checkpoint) is null, not NaN
    write_confusion_png(out / "confusion_matrix.png", metrics["confusion_matrix"], metrics["classes"])
