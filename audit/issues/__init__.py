"""Issue types beyond label errors, from what a run already has: images, labels, splits, embeddings.

=====================  =========  =======================================================================
type                   rows       computed in
=====================  =========  =======================================================================
``near_duplicate``     train      :mod:`audit.issues.duplicates` (content hash; shift-tolerant Pearson)
``leak``               test       :mod:`audit.issues.duplicates` (a test image copied in training)
``outlier``            both       :mod:`audit.issues.outliers` (k-NN distance in the embedding)
``dark``, ``light``,   both       :mod:`audit.issues.quality` (luminance percentiles, Laplacian
``blurry``,                       variance, histogram entropy, source size)
``low_information``,
``odd_size``
``class_imbalance``    train      :mod:`audit.issues.imbalance` (class counts; per-class test accuracy)
=====================  =========  =======================================================================

Each type has one shape (:mod:`audit.issues.base`): ``<name>_score`` (higher = worse),
``is_<name>_issue``, ``<name>_reason``, and its one-line description in :data:`ISSUE_TYPES`. Besides
them: ``duplicate_group`` (int, -1 when none) and ``leak_partner`` (the training ``example_id``, empty
when none). :func:`find_issues` is pure numpy over the arrays (what the pipeline's ``issues`` stage
caches); :func:`issue_columns` turns its output into the table's columns and :func:`issue_summary`
into the manifest's ``issue_types``. Label errors (``is_label_issue``, ``issue_score``, ``category``)
are computed elsewhere (:mod:`audit.signals.table`) and not touched here.
"""

from __future__ import annotations

import numpy as np

from audit.issues.base import ISSUE_TYPES, IssueConfig, IssueType, check_result
from audit.issues.duplicates import find_copies
from audit.issues.imbalance import class_imbalance, class_report
from audit.issues.outliers import find_outliers, pixel_vectors
from audit.issues.quality import image_statistics, quality_scores

__all__ = ["ISSUE_TYPES", "IssueConfig", "IssueType", "find_issues", "issue_columns", "issue_summary",
           "summary_line"]

ROW_TYPES = ("near_duplicate", "leak", "outlier", "dark", "light", "blurry", "low_information", "odd_size",
             "class_imbalance")


def find_issues(images, labels: np.ndarray, split: np.ndarray, *, num_classes: int,
                embeddings: np.ndarray | None = None, sizes: np.ndarray | None = None,
                predictions: np.ndarray | None = None, config: IssueConfig = IssueConfig(),
                device: str | None = "cpu") -> dict[str, np.ndarray]:
    """Every issue type over all N rows of both splits.

    Parameters
    ----------
    images : uint8 (N, C, H, W) array, memmap or :class:`audit.rows.Rows`, as the models see them.
    labels : int (N,) given labels in [0, num_classes).
    split : (N,) ``train`` / ``test``.
    embeddings : float (N, D), e.g. the natural model's penultimate features; ``None``: mean-centred
        pixel vectors (:func:`audit.issues.outliers.pixel_vectors`). Used by ``outlier`` only: copies
        are found in pixel space (see :mod:`audit.issues.duplicates` for why).
    sizes : int (N, 2) [width, height] of each image before it was fitted to the common size, or None.
    predictions : int (N,) the natural model's predicted class (test rows are read), or None.

    Returns a flat dict of numpy arrays (no objects, so it caches as ``.npz``): each row type's
    ``<name>_score`` and ``is_<name>_issue`` (N,), the evidence behind the reasons, and per-class counts.
    """
    labels, split = np.asarray(labels, np.int64), np.asarray(split).astype(str)
    n = len(labels)
    if len(images) != n or len(split) != n:
        raise ValueError(f"find_issues: {len(images)} images, {n} labels, {len(split)} split values")
    if embeddings is not None and (len(embeddings) != n or not np.isfinite(embeddings).all()):
        raise ValueError(f"find_issues: embeddings of shape {np.shape(embeddings)} (finite, {n} rows expected)")
    emb = pixel_vectors(images) if embeddings is None else np.asarray(embeddings, np.float32)
    out: dict[str, np.ndarray] = {}
    out.update(find_copies(images, split, config=config, device=device))
    out["duplicate_conflicting_groups"] = np.array(_conflicting_groups(out["duplicate_group"], labels))
    out.update(find_outliers(emb, labels, split, config=config, device=device))
    stats = image_statistics(images, bins=config.entropy_bins)
    q, ref = quality_scores(stats, sizes, config=config)
    out.update(q)
    out.update({f"stat_{k}": v for k, v in stats.items()})
    out.update({f"ref_{k}": np.array(float(v)) for k, v in ref.items()})
    if sizes is not None:
        out["source_wh"] = np.asarray(sizes, np.int64)
    out.update(class_imbalance(labels, split, num_classes, predictions, config=config))
    for name in ROW_TYPES:
        check_result(name, out, n, split)
    return out


def _names(class_names, labels) -> list[str]:
    return [str(class_names[int(c)]) for c in labels]


def issue_columns(arrays: dict[str, np.ndarray], *, example_ids: np.ndarray, labels: np.ndarray,
                  class_names) -> dict[str, np.ndarray]:
    """The examples table's columns from :func:`find_issues`' arrays, over the same N rows:
    ``<name>_score``, ``is_<name>_issue``, ``<name>_reason`` per type, ``duplicate_group`` and
    ``leak_partner``. ``example_ids`` (N,) name the partners in the reasons."""
    ids, labels = np.asarray(example_ids).astype(str), np.asarray(labels, np.int64)
    n = len(labels)
    cols: dict[str, np.ndarray] = {}
    if "content_hash" in arrays:  # hex, for the examples table (decisions are bound to it)
        raw = np.ascontiguousarray(arrays["content_hash"], dtype="S16").view(np.uint8).reshape(n, 16)
        cols["content_hash"] = np.array([r.tobytes().hex() for r in raw], dtype=object)  # (S16 drops trailing NULs)
    reasons = {name: np.full(n, "", dtype=object) for name in ROW_TYPES}
    names = np.array(_names(class_names, labels), dtype=object)
    # near duplicates: one sentence per group, with the labels inside it
    group = arrays["duplicate_group"]
    for g in np.unique(group[group >= 0]):
        rows = np.flatnonzero(group == g)
        labs = sorted(set(names[rows].tolist()), key=lambda s: (len(s), s))
        what = f"labels {'/'.join(labs)} disagree" if len(labs) > 1 else f"all labelled {labs[0]}"
        for r in rows:
            how = "exact pixels" if arrays["duplicate_exact"][r] else f"similarity {arrays['near_duplicate_score'][r]:.3f}"
            reasons["near_duplicate"][r] = f"{len(rows)} copies (group {g}), {what}; {how}"
    partner = arrays["leak_partner"]
    for r in np.flatnonzero(arrays["is_leak_issue"]):
        p = int(partner[r])
        how = "exact pixels" if arrays["leak_exact"][r] else f"similarity {arrays['leak_score'][r]:.3f}"
        text = f"{'copy' if arrays['leak_exact'][r] else 'near copy'} of training image {ids[p]} ({how})"
        if labels[p] != labels[r]:
            text += f"; labelled {names[p]} there, {names[r]} here"
        reasons["leak"][r] = text
    fence = float(arrays["outlier_fence"])
    for r in np.flatnonzero(arrays["is_outlier_issue"]):
        dc = arrays["outlier_class_distance"][r]
        cls = f", {dc:.3f} from class {names[r]}" if np.isfinite(dc) else ""
        reasons["outlier"][r] = (f"far from the training images: k-NN distance {arrays['outlier_distance'][r]:.3f}"
                                 f"{cls} (farther than {arrays['outlier_score'][r]:.1%} of training rows; "
                                 f"fence {fence:.3f})")
    ref = {k[4:]: float(v) for k, v in arrays.items() if k.startswith("ref_")}
    for r in np.flatnonzero(arrays["is_dark_issue"]):
        reasons["dark"][r] = (f"dark: brightest pixels at {arrays['stat_bright_level'][r]:.0f} of 255 "
                              f"(dataset median {ref['bright_level']:.0f})")
    for r in np.flatnonzero(arrays["is_light_issue"]):
        reasons["light"][r] = (f"washed out: darkest pixels at {arrays['stat_dark_level'][r]:.0f} of 255 "
                               f"(dataset median {ref['dark_level']:.0f})")
    for r in np.flatnonzero(arrays["is_blurry_issue"]):
        reasons["blurry"][r] = (f"blurry: sharpness {arrays['stat_sharpness'][r]:.3g}, "
                                f"{arrays['stat_sharpness'][r] / ref['sharpness']:.0%} of the median {ref['sharpness']:.3g}")
    for r in np.flatnonzero(arrays["is_low_information_issue"]):
        reasons["low_information"][r] = (f"little information: histogram entropy {arrays['stat_entropy'][r]:.2f} bits "
                                         f"(median {ref['entropy']:.2f})")
    if "source_wh" in arrays:
        wh = arrays["source_wh"]
        for r in np.flatnonzero(arrays["is_odd_size_issue"]):
            reasons["odd_size"][r] = (f"source size {wh[r, 0]}×{wh[r, 1]} "
                                      f"(median {ref['median_width']:.0f}×{ref['median_height']:.0f})")
    count = arrays["class_train_count"]
    med = float(np.median(count)) if len(count) else 0.0
    for r in np.flatnonzero(arrays["is_class_imbalance_issue"]):
        c = labels[r]
        reasons["class_imbalance"][r] = (f"class {names[r]} has {count[c]} training images, "
                                         f"{count[c] / med:.0%} of the median class ({med:.0f})")
    for name in ROW_TYPES:
        cols[f"{name}_score"] = np.asarray(arrays[f"{name}_score"], np.float64)
        cols[f"is_{name}_issue"] = np.asarray(arrays[f"is_{name}_issue"], bool)
        cols[f"{name}_reason"] = reasons[name].astype(str)
        if name == "near_duplicate":
            cols["duplicate_group"] = group.astype(np.int64)
        if name == "leak":
            cols["leak_partner"] = np.where(partner >= 0, ids[np.maximum(partner, 0)], "").astype(str)
    return cols


def issue_summary(arrays: dict[str, np.ndarray], class_names, *, config: IssueConfig = IssueConfig()) -> dict:
    """The manifest's ``issue_types``: per type its description, the rows it judges, its count and its
    threshold; ``near_duplicate`` adds its groups, ``class_imbalance`` the per-class report; ``summary``
    is the one line for the run's printed summary (empty when no type found anything)."""
    out: dict = {}
    thresholds = {"near_duplicate": config.near_duplicate_similarity, "leak": config.near_duplicate_similarity,
                  "outlier": float(arrays["outlier_fence"]), "dark": config.dark, "light": config.light,
                  "blurry": config.blurry, "low_information": config.low_information, "odd_size": config.odd_size,
                  "class_imbalance": config.class_imbalance}
    for name in ROW_TYPES:
        t = ISSUE_TYPES[name]
        out[name] = {"description": t.description, "splits": list(t.splits),
                     "count": int(np.asarray(arrays[f"is_{name}_issue"]).sum()), "threshold": thresholds[name]}
    group = arrays["duplicate_group"]
    groups = np.unique(group[group >= 0])
    out["near_duplicate"].update(groups=int(len(groups)), exact_rows=int(arrays["duplicate_exact"].sum()),
                                 conflicting_groups=int(arrays["duplicate_conflicting_groups"]))
    out["leak"]["exact"] = int((arrays["is_leak_issue"] & arrays["leak_exact"]).sum())
    out["outlier"]["threshold_rule"] = (f"combined k-NN distance past Q3 + {config.outlier_iqr:g}×IQR of the training "
                                        f"rows' log distances (k = {config.outlier_k})")
    # which search found the candidates (arrays cached before these keys were recorded: exact)
    approx_copies = ("an approximate candidate search (past COPY_EXACT_FLOPS), every pair it proposes checked "
                     "exactly: a flagged pair is a near copy, but a copy the search missed is missed")
    for name, key in (("near_duplicate", "copy_search_train"), ("leak", "copy_search_test")):
        how = str(arrays.get(key, "exact"))
        out[name]["search"] = "exact" if how == "exact" else approx_copies
    out["outlier"]["search"] = ("exact" if str(arrays.get("outlier_search", "exact")) == "exact" else
                                "IVF nearest neighbours, nprobe raised until recall >= 0.95 on held-out sample queries")
    sizes_recorded = "source_wh" in arrays
    out["odd_size"]["sizes_recorded"] = sizes_recorded
    if not sizes_recorded:
        out["odd_size"]["note"] = ("every image has the size the source stores (arrays, or files of one size): "
                                   "nothing to compare")
    out["class_imbalance"].update(class_report(arrays, class_names, config=config))
    out["class_imbalance"]["count_classes"] = len(out["class_imbalance"]["rare_classes"])
    out["summary"] = summary_line(out)
    return out


def summary_line(issue_types: dict) -> str:
    """One line naming every issue type with at least one issue, e.g. ``other issues: 3 near-duplicate
    groups (7 training images, 1 group with conflicting labels), 2 test images leaked from training, 4 outliers``;
    empty when none. ``issue_types``: the manifest's ``issue_types`` (or :func:`issue_summary`'s output)."""
    parts = []
    nd = issue_types.get("near_duplicate", {})
    if nd.get("count"):
        conflict = nd.get("conflicting_groups")
        extra = f", {conflict} with conflicting labels" if conflict else ""
        g = nd.get("groups", 0)
        parts.append(f"{g} near-duplicate group{'s' if g != 1 else ''} ({nd['count']} training images{extra})")
    words = {"leak": ("test image copied from training", "test images copied from training"),
             "outlier": ("outlier", "outliers"), "dark": ("dark", "dark"), "light": ("washed out", "washed out"),
             "blurry": ("blurry", "blurry"), "low_information": ("near blank", "near blank"),
             "odd_size": ("odd size", "odd size")}
    for name, (one, many) in words.items():
        n = issue_types.get(name, {}).get("count")
        if n:
            parts.append(f"{n} {one if n == 1 else many}")
    ci = issue_types.get("class_imbalance", {})
    if ci.get("rare_classes"):
        parts.append(f"rare classes {', '.join(ci['rare_classes'])}")
    if ci.get("under_performing_classes"):
        parts.append(f"under-performing classes {', '.join(ci['under_performing_classes'])}")
    return ("other issues: " + "; ".join(parts)) if parts else ""


def _conflicting_groups(group: np.ndarray, labels: np.ndarray) -> int:
    """How many duplicate groups hold more than one label."""
    gs = group[group >= 0]
    if not len(gs):
        return 0
    pairs = np.unique(np.c_[gs, labels[group >= 0]], axis=0)
    return int((np.bincount(pairs[:, 0]) > 1).sum())
