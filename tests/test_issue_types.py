"""Issue types beyond label errors (audit.issues): planted copies, leaks, quality problems and outliers
on the bundled digits, found by the pure functions and by a whole run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from audit.issues import ISSUE_TYPES, ROW_TYPES, find_issues, issue_columns, issue_summary, summary_line
from audit.issues.duplicates import find_copies
from audit.issues.imbalance import class_imbalance, class_report
from audit.issues.outliers import find_outliers, pixel_vectors
from audit.issues.planted import (
    COPY_KINDS,
    OUTLIER_KINDS,
    QUALITY_KINDS,
    degrade,
    foreign,
    plant_copies,
    plant_each,
)
from audit.issues.quality import image_statistics, quality_scores

NAMES = [str(c) for c in range(10)]


@pytest.fixture(scope="module")
def digits():
    """(images uint8 (N, 1, 8, 8), labels (N,), split (N,)) of scikit-learn's digits, 3:1 split."""
    b = load_digits()
    images = np.rint(b.images * (255 / 16)).clip(0, 255).astype(np.uint8)[:, None]
    split = np.where(np.random.default_rng(0).random(len(images)) < 0.25, "test", "train")
    return images, b.target.astype(np.int64), split


def _pr(flag: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = int((flag & truth).sum())
    return tp / max(1, int(flag.sum())), tp / max(1, int(truth.sum()))


def test_every_type_has_the_one_shape():
    for name in ROW_TYPES:
        t = ISSUE_TYPES[name]
        assert t.description and "\n" not in t.description and len(t.description) < 120
        assert t.columns == (f"{name}_score", f"is_{name}_issue", f"{name}_reason")
    assert ISSUE_TYPES["near_duplicate"].splits == ("train",) and ISSUE_TYPES["leak"].splits == ("test",)


def test_planted_copies_and_leaks_are_found(digits):
    images, labels, split = digits
    rng = np.random.default_rng(1)
    tr = np.flatnonzero(split == "train")
    # 120 training copies of training rows (30 of each kind) and 40 test copies of training rows (leaks)
    copies, src, kind = plant_copies(images[tr], 120, rng)
    leaks, lsrc, lkind = plant_copies(images[tr], 40, rng)
    n = len(images)
    x = np.concatenate([images, copies, leaks])
    y = np.r_[labels, labels[tr[src]], labels[tr[lsrc]]]
    y[n] = (y[n] + 2) % 10  # one copy with a conflicting label
    s = np.r_[split, np.full(len(copies), "train"), np.full(len(leaks), "test")]
    out = find_copies(x, s)
    truth = np.zeros(len(x), bool)
    truth[n:n + len(copies)] = True
    truth[tr[src]] = True  # a copy's original is in its group too
    prec, rec = _pr(out["is_near_duplicate_issue"], truth)
    assert prec >= 0.9 and rec >= 0.95, (prec, rec)
    for k in COPY_KINDS:  # each kind on its own
        rows = n + np.flatnonzero(kind == k)
        assert out["is_near_duplicate_issue"][rows].mean() >= 0.95, k
    # a planted copy shares its group with its original
    groups = out["duplicate_group"]
    found = out["is_near_duplicate_issue"][n:n + len(copies)]
    assert (groups[n:n + len(copies)][found] == groups[tr[src]][found]).all()
    assert (groups[~out["is_near_duplicate_issue"]] == -1).all()
    assert np.isnan(out["near_duplicate_score"][s == "test"]).all() and not out["is_near_duplicate_issue"][s == "test"].any()
    # leaks: the planted test copies, each naming its training original
    leak_truth = np.zeros(len(x), bool)
    leak_truth[n + len(copies):] = True
    prec, rec = _pr(out["is_leak_issue"], leak_truth)
    assert prec >= 0.9 and rec >= 0.95, (prec, rec)
    hit = out["is_leak_issue"][n + len(copies):]
    partner = out["leak_partner"][n + len(copies):][hit]
    same_image_group = (partner == tr[lsrc][hit]) | (groups[partner] >= 0) & (groups[partner] == groups[tr[lsrc][hit]])
    assert same_image_group.mean() >= 0.95
    assert (out["leak_partner"][~out["is_leak_issue"]] == -1).all() and np.isnan(out["leak_score"][s == "train"]).all()
    # reasons: the conflicting group says so, the leak names its partner's example_id
    ids = np.array([f"row{i}" for i in range(len(x))])
    arrays = find_issues(x, y, s, num_classes=10)
    cols = issue_columns(arrays, example_ids=ids, labels=y, class_names=NAMES)
    g = cols["duplicate_group"][n]
    assert g >= 0
    a, b = sorted({NAMES[y[n]], NAMES[y[tr[src[0]]]]})
    assert cols["near_duplicate_reason"][n] == f"2 copies (group {g}), labels {a}/{b} disagree; " + (
        "exact pixels" if kind[0] == "exact" else f"similarity {arrays['near_duplicate_score'][n]:.3f}")
    r = n + len(copies) + int(np.flatnonzero(hit)[0])
    assert cols["leak_partner"][r] == ids[arrays["leak_partner"][r]] and ids[arrays["leak_partner"][r]] in cols["leak_reason"][r]
    assert (cols["near_duplicate_reason"][~cols["is_near_duplicate_issue"]] == "").all()
    summary = issue_summary(arrays, NAMES)
    assert summary["near_duplicate"]["conflicting_groups"] >= 1
    assert summary["leak"]["count"] == int(cols["is_leak_issue"].sum())
    assert "near-duplicate group" in summary["summary"] and "with conflicting labels" in summary["summary"]


def test_clean_digits_have_few_near_copies(digits):
    images, _, split = digits
    out = find_copies(images, split)
    assert out["is_near_duplicate_issue"].mean() <= 0.005 and out["is_leak_issue"].mean() <= 0.005


def test_planted_quality_problems_are_found(digits):
    images, _, _ = digits
    rng = np.random.default_rng(2)
    bad, _, kind = plant_each(images, 80, rng, QUALITY_KINDS, degrade)
    x = np.concatenate([images, bad])
    q, ref = quality_scores(image_statistics(x))
    n = len(images)
    expect = {"dark": "dark", "light": "light", "blurry": "blurry", "blank": "low_information"}
    for k, name in expect.items():
        assert q[f"is_{name}_issue"][n:][kind == k].all(), k
    for name in ("dark", "light", "blurry", "low_information"):
        assert not q[f"is_{name}_issue"][:n].any(), name  # clean digits: none
    assert (q["odd_size_score"] == 0).all() and not ref["sizes_recorded"]


def test_odd_size_from_source_sizes():
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8)).astype(np.uint8)
    sizes = np.array([[64, 48]] * 4 + [[256, 192], [64, 200]])  # 16× the area; a tall one
    q, _ = quality_scores(image_statistics(images), sizes)
    assert q["is_odd_size_issue"].tolist() == [False] * 4 + [True, True]
    assert q["odd_size_score"][4] == pytest.approx(2.0)


def test_outliers_rank_on_top(digits):
    images, labels, split = digits
    rng = np.random.default_rng(3)
    odd, src, kind = plant_each(images, 18, rng, OUTLIER_KINDS, foreign)  # 1%: noise and inverted digits
    x = np.concatenate([images, odd])
    y = np.r_[labels, labels[src]]
    s = np.r_[split, np.where(np.arange(len(odd)) % 3 == 0, "test", "train")]
    out = find_outliers(pixel_vectors(x), y, s)
    truth = np.r_[np.zeros(len(images), bool), np.ones(len(odd), bool)]
    assert roc_auc_score(truth, out["outlier_score"]) >= 0.99
    prec, rec = _pr(out["is_outlier_issue"], truth)
    assert rec >= 0.9 and prec >= 0.6, (prec, rec)
    assert out["outlier_score"].min() >= 0 and out["outlier_score"].max() <= 1


def test_class_imbalance_and_under_performing_classes(digits):
    images, labels, split = digits
    keep = ~((labels == 0) & (split == "train") & (np.arange(len(labels)) % 4 != 0))  # class 0: a quarter left
    y, s = labels[keep], split[keep]
    pred = y.copy()
    wrong = (y == 3) & (s == "test")
    pred[np.flatnonzero(wrong)[: int(wrong.sum() * 0.6)]] = 8  # class 3: 40% test accuracy
    a = class_imbalance(y, s, 10, pred)
    assert a["is_class_imbalance_issue"][(y == 0) & (s == "train")].all()
    assert not a["is_class_imbalance_issue"][y != 0].any() and np.isnan(a["class_imbalance_score"][s == "test"]).all()
    rep = class_report(a, NAMES)
    assert rep["rare_classes"] == ["0"] and rep["under_performing_classes"] == ["3"]
    assert rep["per_class"][3]["test_accuracy_natural"] == pytest.approx(0.4, abs=0.05)


def test_summary_line_only_names_types_with_issues():
    assert summary_line({name: {"count": 0} for name in ROW_TYPES}) == ""
    line = summary_line({"near_duplicate": {"count": 4, "groups": 2, "conflicting_groups": 1}, "dark": {"count": 1},
                         "leak": {"count": 0}})
    assert line == "other issues: 2 near-duplicate groups (4 training images, 1 with conflicting labels); 1 dark"


def test_run_writes_issue_columns_and_manifest(digits_run):
    """The shared run: every type's columns on every row, by split, and the manifest's issue_types."""
    out, man = digits_run
    df = pd.read_parquet(out / "examples.parquet")
    tr, te = (df["split"] == "train").to_numpy(), (df["split"] == "test").to_numpy()
    for name in ROW_TYPES:
        score, flag, reason = df[f"{name}_score"], df[f"is_{name}_issue"], df[f"{name}_reason"]
        assert score.dtype == np.float64 and flag.dtype == bool and pd.api.types.is_string_dtype(reason), name
        assert (reason[~flag] == "").all() and (reason[flag] != "").all(), name
        judged = np.isin(df["split"], ISSUE_TYPES[name].splits)
        assert score[judged].notna().all() and not flag[~judged].any(), name
        assert man["issue_types"][name]["count"] == int(flag.sum())
    assert df["duplicate_group"].dtype == np.int64 and (df.loc[te, "duplicate_group"] == -1).all()
    assert (df.loc[tr, "leak_partner"] == "").all()
    assert df["near_duplicate_score"][tr].between(-1, 1).all()
    # the label-issue columns are the contract's, untouched
    assert set(df["category"]) <= {"mislabelled", "atypical", "ambiguous", "ok"}
    assert df["issue_score"].between(0, 1).all() and df["is_label_issue"].dtype == bool
    ci = man["issue_types"]["class_imbalance"]
    assert len(ci["per_class"]) == 10 and ci["rare_classes"] == []
    acc = man["metrics"]["natural_test_accuracy"]
    assert ci["overall_test_accuracy_natural"] == pytest.approx(acc, abs=1e-4)
    assert man["stages"]["issues"]["status"] in ("done", "cached") and man["stage_versions"]["issues"] >= 1


def test_run_finds_planted_issues(tmp_path, digits):
    """A whole run (natural model only) on digits with planted copies, leaks, a dark image and outliers:
    found through the run's own embeddings, written by example_id."""
    from audit.config import RunConfig
    from audit.pipeline import run_audit

    images, labels, split = digits
    rng = np.random.default_rng(4)
    tr = np.flatnonzero(split == "train")
    copies, src, _ = plant_copies(images[tr], 24, rng)
    leaks, lsrc, _ = plant_copies(images[tr], 8, rng)
    odd, osrc, _ = plant_each(images, 10, rng, OUTLIER_KINDS, foreign)
    dark, dsrc, _ = plant_each(images, 2, rng, ("dark",), degrade)
    x = np.concatenate([images, copies, leaks, odd, dark])[:, 0]
    y = np.r_[labels, labels[tr[src]], labels[tr[lsrc]], labels[osrc], labels[dsrc]]
    s = np.r_[split, ["train"] * 24, ["test"] * 8, ["train"] * 10, ["train"] * 2]
    np.savez(tmp_path / "planted.npz", images=x, labels=y, split=s)
    out = tmp_path / "run"
    man = run_audit(RunConfig(dataset=f"npz:{tmp_path / 'planted.npz'}", models=("natural",), seed=0), out,
                    progress=False)
    df = pd.read_parquet(out / "examples.parquet").set_index("index").sort_index()
    n = len(images)
    copy_rows = np.r_[n + np.arange(24), tr[src], n + 42 + np.arange(2), dsrc]  # a darkened image is a copy too
    truth = np.zeros(len(df), bool)
    truth[copy_rows] = True
    prec, rec = _pr(df["is_near_duplicate_issue"].to_numpy(), truth)
    assert prec >= 0.9 and rec >= 0.95, (prec, rec)
    leak_rows = n + 24 + np.arange(8)
    assert df["is_leak_issue"].to_numpy()[leak_rows].mean() >= 0.95
    ids = df["example_id"].to_numpy()
    assert (df["leak_partner"].to_numpy()[leak_rows] != "").all() and set(df["leak_partner"][leak_rows]) <= set(ids)
    odd_rows = n + 32 + np.arange(10)
    truth = np.zeros(len(df), bool)
    truth[odd_rows] = True
    assert roc_auc_score(truth, df["outlier_score"]) >= 0.95
    assert df["is_dark_issue"].to_numpy()[n + 42:].all()
    assert man["issue_types"]["near_duplicate"]["count"] == int(df["is_near_duplicate_issue"].sum())
    assert man["issue_types"]["summary"].startswith("other issues: ")
    assert {man["issue_types"][t]["search"] for t in ("near_duplicate", "leak", "outlier")} == {"exact"}  # small


def _synthetic_grey(n: int, seed: int = 0):
    """uint8 (n, 1, 28, 28) as benchmarks/scale.py writes them: 10 random templates plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 256, size=(10, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n)
    return np.clip(0.6 * templates[y] + rng.normal(0, 40, size=(n, 28, 28)), 0, 255).astype(np.uint8)[:, None], y


def test_copy_similarity_is_the_best_shifted_pearson():
    """copy_similarity (the IVF path's verification) against a direct computation of each shift's
    Pearson correlation on the overlapping window; a constant window correlates 0."""
    from audit.issues.duplicates import SHIFTS, copy_similarity, grey_descriptors

    x, _ = _synthetic_grey(60, seed=1)
    x[5] = 77  # constant
    d = grey_descriptors(x, 32)
    rng = np.random.default_rng(2)
    qi, bi = rng.integers(0, 60, 300), rng.integers(0, 60, 300)
    qi[:4], bi[:4] = (5, 5, 5, 8), (5, 6, 7, 8)
    got = copy_similarity(d, d, qi, bi, chunk=64)
    h, w = d.shape[1:]
    for m in range(len(qi)):
        best = -1.0
        for dy, dx in SHIFTS:  # query pixel (y + dy, x + dx) meets base pixel (y, x)
            a = d[qi[m], max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].astype(np.float64).ravel()
            b = d[bi[m], max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)].astype(np.float64).ravel()
            a, b = a - a.mean(), b - b.mean()
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            best = max(best, a @ b / (na * nb) if na > 1e-3 and nb > 1e-3 else 0.0)
        assert abs(got[m] - min(best, 1.0)) < 1e-5, m
    assert (got[:3] == 0).all()  # a constant image correlates with nothing, itself included
    assert got[3] == pytest.approx(1.0, abs=1e-6) and got.max() <= 1.0  # itself, unshifted


def test_copy_search_stays_exact_below_its_threshold():
    from audit.issues.duplicates import copy_method

    assert copy_method(7500, 7500, 28, 28) == "exact"  # mnist10k's training rows
    assert copy_method(2500, 7500, 28, 28) == "exact"
    assert copy_method(1347, 1347, 8, 8) == "exact"  # the bundled digits
    assert copy_method(83334, 83334, 28, 28) == "ivf"
    assert copy_method(16667, 83333, 28, 28) == "ivf"


def test_ivf_copy_search_finds_planted_copies_as_exact_does():
    """Past the threshold (forced here with method="ivf"), the planted 1-pixel shifts and brightness
    changes among a few thousand synthetic 28×28 images come out as the exact search finds them: the
    same pairs, similarities, groups and leak partners."""
    from audit.issues.duplicates import copy_candidates, grey_descriptors
    from audit.issues.planted import plant_copies

    x, _ = _synthetic_grey(2400, seed=3)
    rng = np.random.default_rng(4)
    split = np.where(np.arange(len(x)) < 2000, "train", "test")
    tr = np.flatnonzero(split == "train")
    copies, src, kind = plant_copies(x[tr], 60, rng, ("shift", "brightness"))
    leaks, lsrc, _ = plant_copies(x[tr], 20, rng, ("shift", "brightness"))
    n = len(x)
    xx = np.concatenate([x, copies, leaks])
    s = np.r_[split, np.full(len(copies), "train"), np.full(len(leaks), "test")]
    trr = np.flatnonzero(s == "train")
    d = grey_descriptors(xx[trr], 32)
    runs = {m: copy_candidates(d, d, 10, exclude_self=True, method=m) for m in ("exact", "ivf")}
    planted = [(n + i, int(tr[j])) for i, j in enumerate(src)]  # dataset rows; training rows are the first
    pos = {r: i for i, r in enumerate(trr)}
    for m, (qi, bi, sim) in runs.items():
        pairs = {(int(a), int(b)): float(v) for a, b, v in zip(qi, bi, sim)}
        runs[m] = [pairs.get((pos[a], pos[b]), np.nan) for a, b in planted]
    assert np.isfinite(runs["exact"]).all() and np.isfinite(runs["ivf"]).all()  # every planted pair, both ways
    assert np.abs(np.subtract(runs["exact"], runs["ivf"])).max() < 1e-5
    assert min(runs["ivf"]) >= 0.99
    out = {m: find_copies(xx, s, method=m) for m in ("exact", "ivf")}
    rows = np.r_[n + np.arange(len(copies)), tr[src]]
    for key in ("is_near_duplicate_issue", "duplicate_group"):
        assert (out["exact"][key][rows] == out["ivf"][key][rows]).all(), key
    assert out["ivf"]["is_near_duplicate_issue"][rows].all()
    for key in ("copy_search_train", "copy_search_test"):  # which search ran, for the manifest
        assert [str(out[m][key]) for m in ("exact", "ivf")] == ["exact", "ivf"], key
    assert np.abs(out["exact"]["near_duplicate_score"][rows] - out["ivf"]["near_duplicate_score"][rows]).max() < 1e-5
    lr = n + len(copies) + np.arange(len(leaks))
    for key in ("is_leak_issue", "leak_partner"):
        assert (out["exact"][key][lr] == out["ivf"][key][lr]).all(), key
    assert out["ivf"]["is_leak_issue"][lr].all() and (out["ivf"]["leak_partner"][lr] == tr[lsrc]).all()
    assert np.abs(out["exact"]["leak_score"][lr] - out["ivf"]["leak_score"][lr]).max() < 1e-5
    # elsewhere the approximate search flags nothing the exact one does not (its pairs are verified)
    assert not (out["ivf"]["is_near_duplicate_issue"] & ~out["exact"]["is_near_duplicate_issue"]).any()
    assert not (out["ivf"]["is_leak_issue"] & ~out["exact"]["is_leak_issue"]).any()


def test_ivf_outlier_searches_agree_with_exact(monkeypatch):
    """With the thresholds lowered so the whole search and every class's go IVF, the planted outliers
    are flagged as exact search flags them and the distances barely move (IVF can only miss neighbours)."""
    import audit.neighbors as nb

    rng = np.random.default_rng(7)
    n, d = 6000, 32
    y = rng.integers(0, 4, n)
    centres, maps = rng.normal(size=(4, d)), rng.normal(size=(4, 6, d)) / np.sqrt(6)
    emb = (centres[y] + np.einsum("nl,nld->nd", rng.normal(size=(n, 6)), maps[y]) + 0.1 * rng.normal(size=(n, d))).astype(np.float32)
    odd = rng.choice(n, 30, replace=False)
    emb[odd] = rng.normal(size=(30, d)) * np.linalg.norm(emb, axis=1).mean() / np.sqrt(d)
    s = np.where(rng.random(n) < 0.2, "test", "train")
    exact = find_outliers(emb, y, s)
    calls = []
    real = nb.ivf_search

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(out[2])
        return out
    monkeypatch.setattr(nb, "ivf_search", spy)
    monkeypatch.setattr(nb, "IVF_MIN_PAIRS", 1_000_000)
    monkeypatch.setattr(nb, "IVF_MIN_BASE", 500)
    ivf = find_outliers(emb, y, s)
    assert str(exact["outlier_search"]) == "exact" and str(ivf["outlier_search"]) == "ivf"
    assert len(calls) == 5 and all(c["recall"] >= 0.95 and c["nprobe"] < c["nlist"] for c in calls)
    assert exact["is_outlier_issue"][odd].all() and ivf["is_outlier_issue"][odd].all()
    for key in ("outlier_distance", "outlier_class_distance"):
        e, a = exact[key], ivf[key]
        assert (a >= e - 1e-6).all() and np.abs(a - e).mean() < 5e-3 * e.mean(), key
    agree = (exact["is_outlier_issue"] == ivf["is_outlier_issue"]).mean()
    assert agree >= 0.998, agree
