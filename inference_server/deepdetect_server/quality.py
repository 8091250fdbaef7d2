"""Detection quality from scores and labels: ROC AUC, log-loss, accuracy, precision, recall.

Plain numpy, no scikit-learn at run time (the server image stays small); tests hold every figure to
scikit-learn's on the same scores. Labels: 1 = positive (fake). Scores: probability of the positive label.
"""

from __future__ import annotations

import numpy as np

LOG_LOSS_EPS = 1e-15  # scikit-learn's clip: a confident wrong answer costs ~34.5, not infinity


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties averaged); None when one class is absent."""
    labels, scores = np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average ranks over runs of equal scores: ties count half, as in the ROC's diagonal steps.
    start = 0
    while start < len(sorted_scores):
        end = start
        while end + 1 < len(sorted_scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(labels) == 0:
        return None
    p = np.clip(np.asarray(scores, dtype=np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    """Accuracy, precision and recall of `score >= threshold` (the server's own rule), and the counts."""
    y = np.asarray(labels, dtype=np.int64)
    pred = (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    return {
        "accuracy": (tp + tn) / len(y) if len(y) else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def summary(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    """Everything `evaluate` reports about one scored set."""
    return {
        "auc": roc_auc(labels, scores),
        "log_loss": log_loss(labels, scores),
        "threshold": threshold,
        **at_threshold(labels, scores, threshold),
    }


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold with the highest balanced accuracy (mean of recall and specificity) on these scores:
    what `train` writes into the card from the validation split. Midpoints between distinct scores, so a
    score equal to a training score never sits on the boundary."""
    y = np.asarray(labels, dtype=np.int64)
    s = np.unique(np.asarray(scores, dtype=np.float64))
    if len(s) < 2 or y.min() == y.max():
        return 0.5
    candidates = (s[:-1] + s[1:]) / 2.0
    best, best_score = 0.5, -1.0
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    for t in candidates:
        pred = np.asarray(scores) >= t
        balanced = ((pred & (y == 1)).sum() / n_pos + (~pred & (y == 0)).sum() / n_neg) / 2.0
        if balanced > best_score:
            best, best_score = float(t), float(balanced)
    return best
