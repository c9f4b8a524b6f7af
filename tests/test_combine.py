"""Signal choice by canaries: exact on constructed signals."""

from __future__ import annotations

import numpy as np

from audit.signals.combine import choose_combination, rank01


def _signals():
    rng = np.random.default_rng(0)
    n, m = 400, 20
    is_canary = np.r_[np.zeros(n, bool), np.ones(m, bool)]
    noise = rng.random(n + m)
    perfect = np.where(is_canary, 10.0, noise)  # ranks every canary first
    good = np.where(is_canary, 0.9 + 0.1 * rng.random(n + m), noise)
    return is_canary, {"perfect": perfect, "good": good, "random": rng.random(n + m)}


def test_best_canary_ranking_wins_and_ties_go_to_the_simpler():
    is_canary, sig = _signals()
    out = choose_combination(sig, is_canary)
    assert out["chosen"] == "perfect" and out["members"] == ["perfect"]
    assert out["canary"]["perfect"]["auprc"] == 1.0 and out["canary"]["random"]["auprc"] < 0.3
    assert np.allclose(out["score"], rank01(sig["perfect"]))


def test_rank_sum_rule_by_hand():
    """The product's rule: the lowest sum of ranks under three canary AUPRCs (negatives: real rows
    outside the consensus top n, outside the candidate's own top n, and every real row weighted by
    1 − the share of candidates flagging it). Here the old rule (highest consensus-excluded AUPRC)
    would pick mean_top3; the rank sum picks mean_top2."""
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(1)
    n, m, n_ex = 120, 8, 24
    is_canary = np.r_[np.zeros(n, bool), np.ones(m, bool)]
    noisy = np.r_[rng.random(n) < 0.2, np.ones(m, bool)]
    sig = {k: noisy * s + rng.normal(0, 1, n + m) for k, s in (("a", 1.5), ("b", 1.2), ("c", 1.0))}
    out = choose_combination(sig, is_canary, n_exclude=n_ex)
    c = out["candidates"]
    assert max(c, key=lambda k: c[k]["auprc"]) == "mean_top3"  # what the consensus rule chose
    # ranks (1 = best) under auprc / self_auprc / soft_auprc, read off the reported values:
    # mean_top2 2+1+1, mean_top3 1+3+2, b 3+4+3, a 4+2+4, c 5+5+5
    assert {k: v["rank_sum"] for k, v in c.items()} == {"mean_top2": 4, "mean_top3": 6, "b": 10, "a": 10, "c": 15}
    assert out["chosen"] == "mean_top2" and out["members"] == ["b", "a"]
    # self_auprc of "a" from scratch: drop its own top n real rows, then plain AUPRC
    real = np.flatnonzero(~is_canary)
    keep = np.ones(n + m, bool)
    keep[real[np.argsort(-sig["a"][real])[:n_ex]]] = False
    assert np.isclose(c["a"]["self_auprc"], average_precision_score(is_canary[keep], sig["a"][keep]))
    # soft_auprc of "a": each real row weighted by 1 − (candidates with it in their own top n) / 5
    ranks = {k: rank01(v) for k, v in sig.items()}
    scores = {"a": ranks["a"], "b": ranks["b"], "c": ranks["c"], "mean_top2": (ranks["b"] + ranks["a"]) / 2,
              "mean_top3": (ranks["b"] + ranks["a"] + ranks["c"]) / 3}
    votes = np.zeros(n + m)
    for s in scores.values():
        votes[real[np.argsort(-s[real], kind="stable")[:n_ex]]] += 1
    w = np.where(is_canary, 1.0, 1 - votes / 5)
    assert np.isclose(c["a"]["soft_auprc"], average_precision_score(is_canary[w > 0], sig["a"][w > 0],
                                                                    sample_weight=w[w > 0]))


def test_ineligible_signals_are_scored_but_never_chosen():
    is_canary, sig = _signals()
    out = choose_combination(sig, is_canary, ineligible=("perfect",))
    assert "perfect" not in out["members"] and out["chosen"] == "good"
    assert out["canary"]["perfect"]["auprc"] == 1.0  # still reported
    assert "perfect" not in out["candidates"]


def test_canary_weights_follow_the_estimated_noise_transitions():
    from audit.signals.combine import canary_weights

    joint = np.full((3, 3), 0.01)
    np.fill_diagonal(joint, 0.3)
    joint[1, 0] = 0.2  # most of the noise: true class 0 labelled 1
    given, source = np.array([1, 2, 0, 1]), np.array([0, 0, 1, 2])
    w = canary_weights(joint, given, source)
    assert np.isclose(w.mean(), 1.0) and w[0] == w.max() and w[0] > 3 * w[1]
    assert np.allclose(w[1:], w[1])  # the rare transitions share the floor
    assert np.allclose(canary_weights(np.ones((3, 3)), given, source), 1.0)  # symmetric noise: uniform


def test_weighted_canaries_favour_the_signal_that_finds_the_likely_flips():
    rng = np.random.default_rng(1)
    n = 300
    is_canary = np.r_[np.zeros(n, bool), np.ones(4, bool)]
    base = rng.random(n + 4)
    a = base.copy()
    a[n:] = [5.0, 5.0, 0.2, 0.2]  # finds the two canaries on the common transition
    b = base.copy()
    b[n:] = [0.2, 0.2, 5.0, 5.0]  # finds the two on rare transitions
    sig = {"a": a, "b": b}
    assert choose_combination(sig, is_canary, canary_weight=np.array([1.8, 1.8, 0.2, 0.2]))["chosen"] == "a"
    assert choose_combination(sig, is_canary, canary_weight=np.array([0.2, 0.2, 1.8, 1.8]))["chosen"] == "b"


def test_candidates_are_singles_and_mean_ranks_of_the_best_by_canary():
    is_canary, sig = _signals()
    out = choose_combination(sig, is_canary)
    assert out["candidate_members"] == {"perfect": ["perfect"], "good": ["good"], "random": ["random"],
                                        "mean_top2": ["perfect", "good"], "mean_top3": ["perfect", "good", "random"]}
    assert set(out["candidates"]) == set(out["candidate_members"])


def _benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_judge_reports_canary_real_agreement_and_regret():
    import pandas as pd

    train = pd.DataFrame({
        "is_injected_noise": [True, True] + [False] * 8,
        "a_score": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # real AUPRC 1
        "b_score": [9, 0, 8, 7, 6, 5, 4, 3, 2, 1],  # noise ranked 1st and 10th: (1 + 2/10) / 2 = 0.6
        "c_score": [8, 0, 9, 7, 6, 5, 4, 3, 2, 1],  # 2nd and 10th: (1/2 + 2/10) / 2 = 0.35
    })
    sel = {"canary_scores": {"a": {"auprc": 0.9}, "b": {"auprc": 0.5}, "c": {"auprc": 0.7}}, "chosen": "c",
           "candidate_members": {"a": ["a"], "b": ["b"], "c": ["c"]}}
    out = _benchmark("detection").judge(train, sel)
    assert np.isclose(out["real_auprc_b"], 0.6) and np.isclose(out["real_auprc_c"], 0.35)
    assert np.isclose(out["judge_spearman"], 0.5)  # canary ranks (3, 1, 2) against real ranks (3, 2, 1)
    assert out["best_candidate"] == "a" and np.isclose(out["regret"], 1 - 0.35)
    del sel["candidate_members"]  # an older manifest: candidates rebuilt from the canary order a, c, b
    again = _benchmark("detection").judge(train, sel)
    assert np.isclose(again["regret"], 1 - 0.35) and again["best_real_auprc"] == 1.0


def test_equal_compute_baseline_at_one_repeat_is_the_runs_own_cleanlab(digits_run):
    """``benchmarks/detection.py --equal-compute``: given only the baseline's own time it retrains the
    same folds and reproduces the run's cleanlab scores and flags exactly; given more it repeats them."""
    import json

    import pandas as pd
    from sklearn.metrics import average_precision_score

    from audit.config import config_from_dict

    out, man = digits_run
    bench = _benchmark("detection")
    cfg = config_from_dict(json.loads((out / "manifest.json").read_text())["config"])
    eq = bench.equal_compute(cfg, out, man["stages"]["crossval"]["seconds"], "repeats")
    ex = pd.read_parquet(out / "examples.parquet")
    tr = ex[(ex.split == "train") & ~ex.held_out_as_canary]
    truth = tr["is_injected_noise"].to_numpy(bool)
    p, r = bench._pr(tr["is_cleanlab_issue"].to_numpy(bool), truth)
    assert eq["eq_repeats"] == 1
    assert eq["eq_cleanlab_auprc"] == average_precision_score(truth, tr["cleanlab_score"])
    assert (eq["eq_cleanlab_precision"], eq["eq_cleanlab_recall"]) == (p, r)


def test_self_excluded_canary_metrics_by_hand():
    """Each candidate judged against the real rows minus its own top n (the product's ``self_auprc``),
    and by the share of canaries above its own n-th real row (``benchmarks/selection_rules.py``)."""
    is_canary = np.array([False] * 8 + [True] * 2)
    a = np.array([10, 9, 1, 2, 3, 4, 5, 6, 8, 0.5])  # own top 2 real: rows 0, 1 (cut 9)
    b = np.array([10, 1, 2, 3, 4, 5, 6, 7, 9.5, 9.8])  # own top 2 real: rows 0, 7 (cut 7)
    c = choose_combination({"a": a, "b": b}, is_canary, n_exclude=2)["candidates"]
    # a: canaries 8 and 0.5 among real 1..6: ranks 1 and 8, AP = (1/1 + 2/8) / 2
    assert np.isclose(c["a"]["self_auprc"], 0.625) and np.isclose(c["b"]["self_auprc"], 1.0)
    rec = _benchmark("selection_rules")._recall_at_n({"a": (["a"], a), "b": (["b"], b)}, is_canary, np.ones(10), 2)
    assert rec == {"a": 0.0, "b": 1.0}


def test_soft_exclusion_weights_by_hand():
    """``soft_auprc``'s weights: a real row's weight is 1 − the share of candidates with it in their own top n."""
    from audit.signals.combine import soft_weights

    is_canary = np.array([False] * 4 + [True])
    a = np.array([4, 3, 2, 1, 9.0])  # top 2 real: rows 0, 1
    b = np.array([4, 1, 3, 2, 9.0])  # top 2 real: rows 0, 2
    w = soft_weights({"a": (["a"], a), "b": (["b"], b)}, is_canary, 2)
    assert np.allclose(w, [0.0, 0.5, 0.5, 1.0, 1.0])


def test_selection_rules_capture_round_trips_and_explains(tmp_path):
    """A captured run saved as arrays loads back equal, and ``--explain`` reports each candidate's
    canary AUPRC as the selector scored it next to its AUPRC on the real noise."""
    from sklearn.metrics import average_precision_score

    sr = _benchmark("selection_rules")
    rng = np.random.default_rng(0)
    n, m = 200, 20
    is_canary = np.r_[np.zeros(n, bool), np.ones(m, bool)]
    truth = rng.random(n) < 0.2
    bad = np.r_[truth, np.ones(m, bool)]
    sig = {"good": bad + rng.normal(0, 0.3, n + m), "weak": bad + rng.normal(0, 2.0, n + m)}
    cap = {"signals": sig, "is_canary": is_canary, "n_exclude": 30, "ineligible": (), "canary_weight": None,
           "truth": truth}
    sr.save_capture(cap, tmp_path / "run.npz")
    back = sr.load_capture(tmp_path / "run.npz")
    assert back["n_exclude"] == 30 and back["canary_weight"] is None and np.array_equal(back["truth"], truth)
    assert all(np.array_equal(back["signals"][k], sig[k]) for k in sig)
    df = sr.explain(tmp_path / "run.npz").set_index("candidate")
    assert set(df.index) == {"good", "weak", "mean_top2"} and df["chosen"].sum() == 1
    assert np.isclose(df.loc["good", "real_auprc"], average_precision_score(truth, sig["good"][:n]))
    assert df.loc["good", "canary_auprc"] > df.loc["weak", "canary_auprc"]


def test_paper_claims_agree_with_the_run(digits_run):
    """``benchmarks/paper_claims.py`` on the shared digits run: its shares are the hand counts over the
    trained rows and agree with the manifest's own ``natural_fits_noise``."""
    import pandas as pd

    run, manifest = digits_run
    out = _benchmark("paper_claims").claims(run)
    df = pd.read_parquet(run / "examples.parquet")
    tr = df[(df.split == "train") & ~df.held_out_as_canary]
    wrong, flipped = ~tr.correct_pgd.astype(bool), tr.is_injected_noise.astype(bool)
    assert out["train_rows"] == len(tr) and out["flipped"] == int(flipped.sum())
    assert out["robust_wrong"] == int(wrong.sum()) and out["robust_wrong_and_flipped"] == int((wrong & flipped).sum())
    assert np.isclose(out["robust_wrong_flipped"], (wrong & flipped).sum() / wrong.sum(), atol=1e-4)
    assert np.isclose(out["natural_fits_flipped"], manifest["metrics"]["natural_fits_noise"], atol=1e-4)
    per_epoch = np.load(run / "dynamics.npz")["correct_pgd"].mean(1)
    assert np.allclose(out["robust_train_accuracy_by_epoch"], per_epoch, atol=5e-4) and len(per_epoch) > 1
    # the paper's effect, on the fast recipe: PGD-AT's training errors are mostly the flipped labels
    assert out["robust_wrong_flipped"] > 5 * flipped.mean()
