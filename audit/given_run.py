"""``audit run --models none --pred-probs FILE [--features FILE]``: an audit of a user's own model's
out-of-sample probabilities, no training (cleanlab's main workflow, in seconds).

What it writes keeps the run-directory contract (DESIGN.md): ``examples.parquet`` with the required
columns (no per-model columns: no model trained), ``pairs.parquet``, ``dynamics.npz`` (no epochs) and
``manifest.json``. Label issues: ``issue_score`` is the rank of 1 − cleanlab's label quality of the given
probabilities (``given_cleanlab``; ``label_quality`` is that quality); the top n are flagged, n = cleanlab's
confident-joint estimate on them. Evidence for the suggested label: the given probabilities and, with
``--features``, the labels of the 10 nearest training images in that space. Pairs (with ``--features``):
each test image the given model gets wrong with its nearest training images; without a model there is no
influence to re-rank them by, so ``influence`` is NaN and ``reason`` is ``given_error``. The other issue
types are computed as in a full run, outliers in the given features (or pixels without them).
``self_influence`` and ``memorization`` need trained models and are NaN. Nothing here can check that the
probabilities are out-of-sample (the check compares with the audit's own folds): the manifest says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from audit import __version__
from audit.data import TEST, TRAIN, AuditDataset
from audit.io import save_arrays, write_parquet
from audit.orchestrator import Orchestrator
from audit.signals.combine import detection_metrics, rank01

NEIGHBORS = 10


def run_given(cfg, ds: AuditDataset, inputs: dict, out: Path, *, progress: bool, t_start: float) -> dict:
    """The whole given-probabilities audit into ``out``; returns the manifest."""
    from cleanlab.count import num_label_issues
    from cleanlab.rank import get_label_quality_scores

    from audit import health as h
    from audit.pipeline import _drop_stale_outputs, _package_versions, absolute_spec

    probs, feats = inputs["pred_probs"], inputs.get("features")
    fingerprint = ds.fingerprint()
    tr, te = ds.split_indices(TRAIN), ds.split_indices(TEST)
    te_cov = te[probs.covered[te]]
    with Orchestrator(out, fingerprint, progress=progress) as orch:
        _drop_stale_outputs(out, cfg, fingerprint)
        base = {"tool": "benign-audit", "version": __version__, "config": cfg.to_dict(), "config_hash": cfg.hash(),
                "dataset": {"spec": absolute_spec(ds.spec), "name": ds.name, "fingerprint": fingerprint,
                            "source_fingerprint": ds.extra.get("source_fingerprint"), "num_train": len(tr),
                            "num_test": len(te), "num_canaries": 0, "shape": list(ds.shape),
                            "class_names": list(ds.class_names)},
                "device": "cpu", "threads": 1, "packages": _package_versions(), "stage_versions": {},
                "recipe": {"eps": {"value": None, "source": "no models (--models none)"}},
                "inputs": {k.replace("_", "-"): v.record() for k, v in inputs.items()}}
        orch.log(f"plan: no training; cleanlab on --pred-probs ({len(tr):,} training rows"
                 + (f", {len(te_cov):,} test rows" if len(te_cov) else "") + ")"
                 + ("; neighbours and pairs in --features" if feats else ""))
        orch.write_manifest(base, "running")
        t0 = time.perf_counter()
        orch.key("given", "given", {"pred_probs": probs.fingerprint, "features": feats.fingerprint if feats else ""})
        orch.start("given")
        y = ds.labels.astype(np.int64)
        p = probs.values
        lq = np.full(len(y), np.nan)
        lq[tr] = get_label_quality_scores(y[tr], p[tr])
        if len(te_cov):
            lq[te_cov] = get_label_quality_scores(y[te_cov], p[te_cov])
        k = ds.num_classes
        n_issues = int(num_label_issues(y[tr], p[tr])) if len(tr) > k else 0
        score = np.zeros(len(y))
        score[tr] = rank01(1 - lq[tr])
        if len(te_cov):
            score[te_cov] = rank01(1 - lq[te_cov])
        flags = np.zeros(len(y), bool)
        flags[tr[np.argsort(-score[tr], kind="stable")[:n_issues]]] = True
        if len(te_cov) > 2 * k and len(np.unique(y[te_cov])) == k:
            from audit.signals.util import find_label_issues

            flags[te_cov] = find_label_issues(y[te_cov], p[te_cov])
        nb_idx, pairs, nb_info = (_neighbours(feats, y, tr, te, p, probs.covered, ds.example_ids.astype(str))
                                  if feats else (None, None, {}))
        issues = _issues(orch, ds, feats, p, probs)
        orch.stages["given"] = {"status": "done", "seconds": round(time.perf_counter() - t0, 3)}

        df, cat_counts = _examples(ds, y, p, probs.covered, lq, score, flags, nb_idx, tr)
        from audit.issues import issue_columns, issue_summary

        cols = issue_columns(issues, example_ids=ds.example_ids, labels=ds.labels, class_names=ds.class_names)
        order = np.r_[tr, te]
        df = pd.concat([df, pd.DataFrame({c: v[order] for c, v in cols.items()})], axis=1)
        if pairs is None:
            pairs = pd.DataFrame({"test_id": pd.Series([], dtype=str), "train_id": pd.Series([], dtype=str),
                                  "rank": pd.Series([], dtype=np.int32), "similarity": pd.Series([], dtype=float),
                                  "influence": pd.Series([], dtype=float), "reason": pd.Series([], dtype=str)})
        checks = h.check_given(p[tr], p[te] if probs.covered[te].all() and len(te) else None, None, y[tr], y[te])
        checks = [c.as_dict() for c in checks]
        checks[-1]["text"] = ("no out-of-sample models of the audit's own to compare with (--models none): "
                              "make sure the probabilities are out-of-sample (e.g. cross-validated)")
        warnings = ["no models trained (--models none): issue_score is cleanlab's label quality of --pred-probs; "
                    "self_influence and memorization are NaN"]
        if not flags[tr].any():
            warnings.append("nothing flagged: cleanlab's estimate on --pred-probs is zero; the review queue "
                            "shows the top-ranked examples")
        t1 = time.perf_counter()
        meta = {"class_names": list(ds.class_names), "dataset": ds.spec, "config_hash": cfg.hash(), "models": [],
                "fingerprint": fingerprint}
        write_parquet(out / "examples.parquet", df, meta)
        write_parquet(out / "pairs.parquet", pairs, meta)
        save_arrays(out / "dynamics.npz", {"example_ids": ds.example_ids[tr].astype(str), "models": np.array([], str)})
        orch.stages["write"] = {"status": "done", "seconds": round(time.perf_counter() - t1, 3)}
        metrics = {"num_flagged_train": int(flags[tr].sum()), "num_flagged_test": int(flags[te].sum()),
                   "estimated_noise_rate": n_issues / max(1, len(tr)), "num_pairs": int(len(pairs)),
                   "num_canary_sources": 0, "given_train_accuracy": float((p[tr].argmax(1) == y[tr]).mean())}
        if len(te_cov):
            metrics["given_test_accuracy"] = float((p[te_cov].argmax(1) == y[te_cov]).mean())
        if ds.clean_labels is not None:
            truth = ds.clean_labels[tr] != y[tr]
            metrics.update({f"noise_{k2}": v for k2, v in detection_metrics(score[tr], truth).items()})
            tp = int((flags[tr] & truth).sum())
            metrics["noise_precision"] = tp / max(1, int(flags[tr].sum()))
            metrics["noise_recall"] = tp / max(1, int(truth.sum()))
        metrics.update(wall_seconds=round(time.perf_counter() - t_start, 2), compute_seconds=orch.compute_seconds())
        flagging = {"n": n_issues, "rule": "out_of_sample", "out_of_sample": n_issues, "robust_errors": {},
                    "reason": "no models trained: flagged by cleanlab's estimate on --pred-probs", "warnings": warnings}
        extra = {"flagging": flagging,
                 "signal_selection": {"rule": "one signal: given_cleanlab (no models trained, no canaries)",
                                      "chosen": "given_cleanlab", "members": ["given_cleanlab"], "canary_scores": {},
                                      "not_eligible": [], "candidate_members": {}, "candidates": {},
                                      "num_canaries": 0, "num_label_issues": n_issues, "excluded_unhealthy": []},
                 "issue_types": issue_summary(issues, ds.class_names), "neighbors": nb_info,
                 "health": {"ok": all(c["ok"] is not False for c in checks), "checks": checks, "attempts": {},
                            "final_stages": {}, "failed": {}, "warnings": []},
                 "categories": cat_counts, "warnings": warnings}
        if extra["issue_types"].get("summary"):
            orch.log(extra["issue_types"]["summary"])
        return orch.write_manifest(base, "complete", metrics, extra)


def _neighbours(feats, y, tr, te, p, covered, ids):
    """The NEIGHBORS nearest training rows (in --features) of every row, without itself, and the pairs:
    each covered test row the given model gets wrong with its nearest training rows."""
    from audit.neighbors import search

    f = feats.values
    kk = min(NEIGHBORS + 1, len(tr))
    q = np.r_[tr, te]
    sims, idx, info = search(f[tr], f[q], kk)
    own = np.r_[np.arange(len(tr)), np.full(len(te), -1)]
    is_self = idx == own[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), kk - 1)
    keep = np.ones_like(idx, bool)
    keep[np.arange(len(idx)), drop] = False
    nb = idx[keep].reshape(len(idx), kk - 1)
    wrong = te[covered[te] & (p[te].argmax(1) != y[te])]
    per = min(5, len(tr))
    if len(wrong):
        s2, i2, _ = search(f[tr], f[wrong], per)
    else:
        s2, i2 = np.zeros((0, per), np.float32), np.zeros((0, per), np.int64)
    pairs = pd.DataFrame({"test_id": ids[np.repeat(wrong, per)], "train_id": ids[tr[i2.ravel()]],
                          "rank": np.tile(np.arange(1, per + 1), len(wrong)).astype(np.int32),
                          "similarity": s2.ravel().astype(np.float64),
                          "influence": np.full(len(wrong) * per, np.nan), "reason": "given_error"})
    return nb, pairs, {"evidence": info}


def _issues(orch, ds, feats, p, probs) -> dict:
    from audit.issues import IssueConfig
    from audit.stages import issues_stage

    ic = IssueConfig()
    orch.key("issues", "issues", {"issues": ic, "features": feats.fingerprint if feats else "",
                                  "pred_probs": probs.fingerprint})
    arrays = orch.cached("issues")
    if arrays is not None:
        return arrays
    orch.start("issues")
    t0 = time.perf_counter()
    pred = np.nan_to_num(p).argmax(1) if probs.covered.all() else None  # the per-class test accuracy reads them
    sizes = ds.extra.get("source_wh")
    sizes = np.asarray(sizes, np.int64) if sizes is not None and len(sizes) == len(ds.labels) else None
    arrays = issues_stage(ds.images, ds.labels, ds.split, ic, num_classes=ds.num_classes,
                          embeddings=feats.values if feats else None, predictions=pred, sizes=sizes)
    return orch.store("issues", arrays, time.perf_counter() - t0)


def _examples(ds, y, p, covered, lq, score, flags, nb_idx, tr):
    """The examples table (training rows, then test rows, each in dataset order) and the category counts."""
    from audit.signals.table import _categories, _category_reasons

    rows = np.r_[tr, ds.split_indices(TEST)]
    k = ds.num_classes
    given = y[rows]
    cov = covered[rows]
    ev = np.where(cov[:, None], np.nan_to_num(p[rows]), np.eye(k)[given])  # no probabilities: the given label
    alt = ev.argmax(1)
    zeros = np.zeros(len(rows))
    if nb_idx is not None:  # two views: the given probabilities (their argmax is alt) and the neighbours
        nb_lab = y[tr][nb_idx]
        votes = 1 + (np.array([np.bincount(r, minlength=k).argmax() for r in nb_lab]) == alt).astype(int)
        views = "of 2 views (your model's probabilities, neighbours in --features)"
    else:  # one view: the given probabilities alone decide
        nb_lab, votes, views = None, np.full(len(rows), 2), "of 1 view (your model's probabilities)"
    cat = _categories(flags[rows], given, ev, votes, zeros, alt)
    reasons = _category_reasons(cat, given, alt, ev, votes if nb_lab is not None else np.ones(len(rows), int), zeros,
                                ds.class_names)
    reasons = [r.replace("of 3 views (out-of-sample, robust, neighbours)", views) for r in reasons]
    df = pd.DataFrame({
        "example_id": ds.example_ids[rows].astype(str), "split": ds.split[rows].astype(str),
        "index": ds.index[rows].astype(np.int64), "given_label": given, "suggested_label": alt.astype(np.int64),
        "issue_score": score[rows], "is_label_issue": flags[rows], "category": cat,
        "category_reason": reasons,
        "label_quality": lq[rows], "given_label_quality": lq[rows],
        "given_cleanlab_score": np.where(ds.split[rows] == TRAIN, 1 - lq[rows], np.nan),
        "is_given_cleanlab_issue": flags[rows] & (ds.split[rows] == TRAIN),
        "self_influence": np.full(len(rows), np.nan), "memorization": np.full(len(rows), np.nan),
        "evidence_confidence": ev.max(1), "held_out_as_canary": np.zeros(len(rows), bool),
        "signals_fired": np.where(flags[rows] & (ds.split[rows] == TRAIN), "given_cleanlab", ""),
    })
    if nb_lab is not None:
        df["neighbor_ids"] = [list(map(str, r)) for r in ds.example_ids[tr][nb_idx]]
        df["neighbor_labels"] = [list(map(int, r)) for r in nb_lab]
    if ds.paths is not None:
        df["path"] = np.asarray(ds.paths)[rows].astype(str)
    if ds.clean_labels is not None:
        df["clean_label"] = ds.clean_labels[rows].astype(np.int64)
        df["is_injected_noise"] = df["clean_label"].to_numpy() != given
    return df, {c: int((cat == c).sum()) for c in ("mislabelled", "atypical", "ambiguous", "ok")}
