"""Classification and retrieval metrics: accuracy, macro-F1, per-class table, Recall@k, MRR."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(true: Sequence[int], pred: Sequence[int], num_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def classification_metrics(true: Sequence[int], pred: Sequence[int], classes: Sequence[str]) -> dict:
    """accuracy, macro_f1 (mean over classes of per-class F1; 0 for a class never predicted nor present),
    per_class {precision, recall, f1, support} and the confusion matrix."""
    cm = confusion_matrix(true, pred, len(classes))
    tp = np.diag(cm).astype(float)
    predicted, support = cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    per_class = {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                     "support": int(support[i])} for i, c in enumerate(classes)}
    return {"accuracy": float(tp.sum() / max(1.0, cm.sum())), "macro_f1": float(f1.mean()),
            "per_class": per_class, "confusion_matrix": cm.tolist()}


def first_hit_ranks(scores: np.ndarray, query_labels: Sequence, gallery_labels: Sequence,
                    exclude_self: bool = False) -> np.ndarray:
    """1-based rank of the first same-label gallery item per query (0 when none exists).

    `scores` is (Q, G), higher = more similar; ties keep gallery order.
    `exclude_self` drops gallery item i for query i (image-to-image on one set).
    """
    scores = np.array(scores, dtype=np.float64)
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    gallery = np.asarray(gallery_labels)
    ranks = np.zeros(len(scores), dtype=np.int64)
    for q, row in enumerate(order):
        keep = row if not exclude_self else row[row != q]
        hits = np.nonzero(gallery[keep] == query_labels[q])[0]
        ranks[q] = hits[0] + 1 if len(hits) else 0
    return ranks


def retrieval_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """recall@k (share of queries with a hit in the top k) and MRR (mean 1/rank, 0 for no hit)."""
    ranks = np.asarray(ranks)
    found = ranks > 0
    out = {f"recall@{k}": float(np.mean(found & (ranks <= k))) for k in ks}
    out["mrr"] = float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)))
    out["queries"] = int(len(ranks))
    return out
