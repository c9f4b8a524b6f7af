"""``class_imbalance``: classes with few training rows, and the classes the natural model does worst on."""

from __future__ import annotations

import numpy as np

from audit.issues.base import TRAIN, IssueConfig, register

CLASS_IMBALANCE = register("class_imbalance", "training images of a class with far fewer images than the "
                           "median class", (TRAIN,))


def class_imbalance(labels: np.ndarray, split: np.ndarray, num_classes: int, predictions: np.ndarray | None = None, *,
                    config: IssueConfig = IssueConfig()) -> dict[str, np.ndarray]:
    """Per class (K,): ``class_train_count``, ``class_test_count``, ``class_test_correct`` (rows the
    natural model gets right; zeros without ``predictions``). Per row (N,): ``class_imbalance_score``
    = max(0, 1 − its class's training count / the median class count) on training rows (NaN on test)
    and ``is_class_imbalance_issue`` where the count is below ``config.class_imbalance`` × the median.
    ``predictions`` (N,): the natural model's predicted class per row (test rows are read)."""
    labels, split = np.asarray(labels), np.asarray(split).astype(str)
    tr, te = split == "train", split == "test"
    count = np.bincount(labels[tr], minlength=num_classes)
    med = float(np.median(count)) if num_classes else 0.0
    ratio = count / max(med, 1e-9)
    score = np.full(len(labels), np.nan)
    score[tr] = np.maximum(0.0, 1.0 - ratio[labels[tr]])
    flag = np.zeros(len(labels), bool)
    flag[tr] = ratio[labels[tr]] < config.class_imbalance
    correct = np.zeros(num_classes, np.int64)
    if predictions is not None:
        ok = te & (np.asarray(predictions) == labels)
        correct = np.bincount(labels[ok], minlength=num_classes)
    return {"class_imbalance_score": score, "is_class_imbalance_issue": flag, "class_train_count": count,
            "class_test_count": np.bincount(labels[te], minlength=num_classes), "class_test_correct": correct,
            "class_has_predictions": np.array(predictions is not None)}


def class_report(arrays: dict, class_names, *, config: IssueConfig = IssueConfig()) -> dict:
    """The manifest's ``class_imbalance`` entry: the median count, the rare classes and, per class, its
    counts, its natural test accuracy and whether it under-performs (below the overall accuracy by more
    than max(``config.underperforming_gap``, 2 binomial standard errors of the class))."""
    count, n_te, ok = arrays["class_train_count"], arrays["class_test_count"], arrays["class_test_correct"]
    med = float(np.median(count)) if len(count) else 0.0
    have = bool(arrays.get("class_has_predictions", True))
    overall = float(ok.sum() / n_te.sum()) if n_te.sum() and have else float("nan")
    per_class, rare, under = [], [], []
    for c, name in enumerate(class_names):
        acc = float(ok[c] / n_te[c]) if n_te[c] and have else float("nan")
        se = float(np.sqrt(max(overall * (1 - overall), 1e-12) / n_te[c])) if n_te[c] else float("nan")
        is_under = bool(n_te[c] and have and acc < overall - max(config.underperforming_gap, 2 * se))
        is_rare = bool(count[c] < config.class_imbalance * med)
        per_class.append({"class": int(c), "name": str(name), "train_count": int(count[c]),
                          "ratio_to_median": round(float(count[c] / med), 4) if med else None,
                          "test_count": int(n_te[c]), "test_accuracy_natural": None if np.isnan(acc) else round(acc, 4),
                          "rare": is_rare, "under_performing": is_under})
        rare += [str(name)] * is_rare
        under += [str(name)] * is_under
    return {"median_train_count": med, "threshold": config.class_imbalance, "rare_classes": rare,
            "overall_test_accuracy_natural": None if np.isnan(overall) else round(overall, 4),
            "under_performing_classes": under, "underperforming_gap": config.underperforming_gap,
            "per_class": per_class}
