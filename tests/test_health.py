"""A run checks its own models: each health check fails on a model made to fail, the retry or the
exclusion follows, a memorizing robust model still leads to flags with a stated reason, and the attack
radius follows the data, never the dataset's name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from audit import health
from audit.config import RunConfig, resolve_defaults
from audit.signals.table import flag_count
from audit.train.engine import TrainSpec

K = 10


def _logits(pred: np.ndarray) -> np.ndarray:
    out = np.zeros((len(pred), K), np.float32)
    out[np.arange(len(pred)), pred] = 5.0
    return out


def _fake_run(seed: int = 0, n: int = 400, n_test: int = 200):
    """Labels, a good natural model (fits every given label, 90% on test), cross-validation arrays that
    doubt 20% of the training labels, and a robust model that refuses those 20%."""
    rng = np.random.default_rng(seed)
    y, y_te = rng.integers(0, K, n), rng.integers(0, K, n_test)
    doubted = rng.random(n) < 0.2
    oos_pred = np.where(doubted, (y + 1) % K, y)
    te_pred = np.where(rng.random(n_test) < 0.9, y_te, (y_te + 3) % K)
    nat = {"train_logits": _logits(y), "test_logits": _logits(te_pred),
           "adv_correct_test": rng.random(n_test) < 0.05}
    rob = {"train_logits": _logits(oos_pred), "test_logits": _logits(te_pred),
           "adv_correct_test": rng.random(n_test) < 0.7}
    oos = np.full((n, K), 0.01)
    oos[np.arange(n), oos_pred] = 0.91
    cv = {"oos_probs": oos, "test_probs": _logits(te_pred)[None]}
    return y, y_te, nat, rob, cv


def _failed(checks):
    return health.failures(checks)


@pytest.mark.parametrize("seed", range(5))
def test_healthy_models_pass_every_check(seed):
    y, y_te, nat, rob, cv = _fake_run(seed)
    checks = health.check_models({"natural": nat, "pgd": rob}, cv, y, y_te)
    assert _failed(checks) == {}
    assert {(c.model, c.name) for c in checks} == {("natural", "beats_chance"), ("natural", "fits"),
                                                  ("pgd", "beats_chance"), ("pgd", "robust"),
                                                  ("pgd", "no_memorizing"), ("crossval", "beats_chance")}


def test_each_check_fails_on_a_model_made_to_fail():
    y, y_te, nat, rob, cv = _fake_run()
    collapsed = {**rob, "test_logits": _logits(np.zeros(len(y_te), int))}  # always class 0: chance
    assert _failed(health.check_models({"natural": nat, "pgd": collapsed}, cv, y, y_te)) == {"pgd": ["beats_chance"]}
    memorizer = {**rob, "train_logits": _logits(y)}  # fits every given label, the doubted ones too
    assert _failed(health.check_models({"natural": nat, "pgd": memorizer}, cv, y, y_te)) == {"pgd": ["no_memorizing"]}
    fragile = {**rob, "adv_correct_test": nat["adv_correct_test"]}  # no more robust than the natural model
    assert _failed(health.check_models({"natural": nat, "pgd": fragile}, cv, y, y_te)) == {"pgd": ["robust"]}
    underfit = {**nat, "train_logits": _logits(np.where(np.arange(len(y)) % 4 == 0, (y + 1) % K, y))}  # fits 75%
    assert _failed(health.check_models({"natural": underfit, "pgd": rob}, cv, y, y_te)) == {"natural": ["fits"]}
    bad_cv = {**cv, "test_probs": _logits(np.full(len(y_te), 3))[None]}
    assert _failed(health.check_models({"natural": nat, "pgd": rob}, bad_cv, y, y_te)) == {"crossval": ["beats_chance"]}
    aug = {"test_accuracy": np.float64(0.11)}
    assert _failed(health.check_models({"natural": nat, "aug": aug}, cv, y, y_te)) == {"aug": ["beats_chance"]}


def test_a_robust_model_that_fits_hard_clean_rows_is_not_memorizing():
    """Weak out-of-sample models doubt many clean but hard rows. A robust model that fits those and refuses
    the confidently doubted ones passes (it fits 71% of the doubted rows, which the old rule, at most 50%,
    failed); one that refuses almost none of them fails."""
    rng = np.random.default_rng(3)
    n, n_conf, n_soft = 400, 40, 100
    y, y_te = rng.integers(0, K, n), rng.integers(0, K, 200)
    conf, soft = np.zeros(n, bool), np.zeros(n, bool)
    conf[:n_conf], soft[n_conf:n_conf + n_soft] = True, True
    oos = np.full((n, K), 0.01)
    oos[np.arange(n), y] = 0.91
    oos[conf] = 0.01
    oos[np.flatnonzero(conf), (y[conf] + 1) % K] = 0.91
    oos[soft] = 0.3 / (K - 2)
    oos[np.flatnonzero(soft), y[soft]] = 0.3
    oos[np.flatnonzero(soft), (y[soft] + 2) % K] = 0.4
    te_pred = np.where(rng.random(200) < 0.9, y_te, (y_te + 3) % K)
    cv = {"oos_probs": oos, "test_probs": _logits(te_pred)[None]}
    nat = {"train_logits": _logits(y), "test_logits": _logits(te_pred), "adv_correct_test": rng.random(200) < 0.05}
    rob = {**nat, "train_logits": _logits(np.where(conf, (y + 1) % K, y)), "adv_correct_test": rng.random(200) < 0.7}
    n_oos = health.issue_estimate(y, oos)
    assert n_conf <= n_oos < n_conf + n_soft
    mem = [c for c in health.check_models({"natural": nat, "pgd": rob}, cv, y, y_te) if c.name == "no_memorizing"]
    assert mem[0].ok is True and mem[0].value == n_conf and mem[0].bound == pytest.approx(health.REFUSE_MIN * n_oos)
    fit = float((rob["train_logits"].argmax(1)[conf | soft] == y[conf | soft]).mean())
    assert fit == pytest.approx(n_soft / (n_conf + n_soft)) and fit > 0.5
    few = np.where(np.arange(n) < int(health.REFUSE_MIN * n_oos) - 1, (y + 1) % K, y)  # refuses too few
    mem = [c for c in health.check_models({"natural": nat, "pgd": {**rob, "train_logits": _logits(few)}}, cv, y, y_te)
           if c.name == "no_memorizing"]
    assert mem[0].ok is False and "refuses" in mem[0].text


def test_checks_that_cannot_run_say_so_and_pass():
    y, y_te, nat, rob, cv = _fake_run()
    no_test = np.zeros(0, int)
    nat0 = {**nat, "test_logits": np.zeros((0, K)), "adv_correct_test": np.zeros(0, bool)}
    rob0 = {**rob, "test_logits": np.zeros((0, K)), "adv_correct_test": np.zeros(0, bool)}
    checks = health.check_models({"natural": nat0, "pgd": rob0}, {**cv, "test_probs": np.zeros((1, 0, K))}, y, no_test)
    assert _failed(checks) == {}
    assert all("no test rows" in c.text for c in checks if c.ok is None and c.name != "no_memorizing")
    lost = {**cv, "test_probs": _logits(np.zeros(len(y_te), int))[None]}  # the folds did not learn
    mem = [c for c in health.check_models({"natural": nat, "pgd": rob}, lost, y, y_te) if c.name == "no_memorizing"]
    assert mem[0].ok is None and "did not learn" in mem[0].text
    trusting = {**cv, "oos_probs": _logits(y)}  # the out-of-sample models doubt nothing
    mem = [c for c in health.check_models({"natural": nat, "pgd": rob}, trusting, y, no_test) if c.name == "no_memorizing"]
    assert mem[0].ok is None and "not checked" in mem[0].text


def test_chance_is_the_commonest_test_label():
    assert health.chance_level(np.array([0, 0, 0, 1])) == 0.75
    y, _, nat, rob, cv = _fake_run()
    y_te = np.zeros(200, int)  # one class only: always answering it is chance, and the bound is 1.0
    c = health.check_models({"natural": {**nat, "test_logits": _logits(np.zeros(200, int))}}, None, y, y_te)
    assert [x.bound for x in c if x.name == "beats_chance"] == [1.0]


def test_retry_recipes_follow_the_failure_and_are_bounded():
    spec = TrainSpec(method="pgd", lr=0.1, eps=0.3, step_size=0.375, steps=2, epochs=10, eps_warmup=0.4)
    new, why = health.retry_recipe(spec, ["beats_chance", "robust"], 1)
    assert (new.lr, new.eps_warmup, new.eps) == (0.05, 0.5, 0.3) and "learning rate" in why
    new2, why2 = health.retry_recipe(new, ["beats_chance"], 2)
    assert new2.eps == pytest.approx(0.15) and new2.step_size == pytest.approx(0.1875) and "eps" in why2
    mem, why = health.retry_recipe(spec, ["no_memorizing"], 1)
    assert (mem.eps, mem.epochs, mem.step_size) == (0.3, 5, 0.375) and "epochs 10 -> 5" in why
    mem2, why2 = health.retry_recipe(mem, ["no_memorizing"], 2)
    assert mem2.eps == pytest.approx(0.45) and mem2.epochs == 2 and mem2.step_size == pytest.approx(0.5625)
    fit, _ = health.retry_recipe(TrainSpec(epochs=15), ["fits"], 1)
    assert fit.epochs == 30
    rob, _ = health.retry_recipe(spec, ["robust"], 1)
    assert rob.epochs == 20 and rob.steps == 3 and rob.step_size * rob.steps == pytest.approx(spec.step_size * spec.steps)
    assert health.retry_recipe(spec, ["beats_chance"], health.MAX_RETRIES + 1) == (None, "")


def test_failed_models_signals_leave_the_choice():
    names = ["cleanlab", "aum_early", "self_influence", "robust_margin_pgd", "robust_aum_pgd", "robust_margin_trades",
             "aum_aug", "cv_aum"]
    assert health.excluded_signals({"pgd": ["no_memorizing"]}, names) == ["robust_margin_pgd", "robust_aum_pgd"]
    assert health.excluded_signals({"natural": ["fits"], "aug": ["beats_chance"]}, names) == \
        ["aum_early", "self_influence", "aum_aug"]
    assert health.excluded_signals({"crossval": ["beats_chance"]}, names) == ["cleanlab", "cv_aum"]


def test_flag_count_never_trusts_an_implausible_robust_bound():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 1000)
    flip = rng.random(1000) < 0.15
    probs = np.full((1000, K), 0.02)
    probs[np.arange(1000), np.where(flip, (y + 1) % K, y)] = 0.82
    honest = np.where(flip, (y + 1) % K, y)
    r = flag_count(y, probs, {"pgd": honest})
    assert r["rule"] == "min" and r["n"] == min(r["out_of_sample"], int(flip.sum())) and r["n"] > 100
    r = flag_count(y, probs, {"pgd": y})  # a memorizer leaves nothing wrong
    assert r["rule"] == "out_of_sample" and r["n"] == r["out_of_sample"] > 100
    assert "pgd model leaves only 0" in r["reason"] and "cannot bound" in r["reason"]
    r = flag_count(y, probs, {}, unhealthy=("pgd",))
    assert r["rule"] == "out_of_sample" and "no robust model passed its checks (pgd)" in r["reason"]


def test_eps_never_depends_on_the_specs_prefix():
    for shape in ((1, 28, 28), (1, 20, 20), (3, 32, 32), (1, 8, 8)):
        by_name = {resolve_defaults(RunConfig(dataset=spec), shape, 5000, False).eps
                   for spec in ("fashion-mnist:/d", "npz:/d/x.npz", "mnist:/d", "folder:/d")}
        assert len(by_name) == 1, shape


def test_small_sets_get_more_steps_and_explicit_options_win():
    big = resolve_defaults(RunConfig(), (1, 28, 28), 7500, False)  # MNIST-10k: tuned, unscaled
    small = resolve_defaults(RunConfig(), (1, 28, 28), 500, False)
    assert (small.epochs, small.robust_epochs, small.cv_epochs) == (4 * big.epochs, 4 * big.robust_epochs, 4 * big.cv_epochs)
    # smaller batches too: 500 rows at batch 32 make 16 steps an epoch, the learning rate by sqrt(32 / 64)
    assert (small.batch_size, small.robust_batch_size, small.cv_batch_size) == (32, 32, 32)
    assert small.lr == pytest.approx(big.lr * 0.5 ** 0.5) and small.robust_lr == pytest.approx(big.robust_lr / 2)
    assert (big.batch_size, big.robust_batch_size, big.lr) == (64, 128, 0.1)
    assert resolve_defaults(RunConfig(epochs=7), (1, 28, 28), 500, False).epochs == 7
    digits = resolve_defaults(RunConfig(), (1, 8, 8), 1347, False)
    assert digits.epochs == 100  # the tiny recipe's own size: unchanged


def _stripes(n: int, amplitude: float, seed: int, side: int = 16, noise: float = 0.03):
    """Ten classes of grey images: class c is a stripe pattern of frequency c+1 at ``amplitude`` around mid
    grey, plus pixel noise. An l-inf attack larger than the amplitude can erase the pattern."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    t = np.linspace(0, 2 * np.pi, side)
    pats = np.stack([np.sin((c + 1) * t)[None, :].repeat(side, 0) for c in range(K)])
    x = 0.5 + amplitude * pats[y] + rng.normal(0, noise, (n, side, side))
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)[:, None], y


def test_calibrated_eps_differs_for_grey_sets_with_different_statistics():
    import torch

    from audit.recipes import train_recipe
    from audit.train.calibrate import calibrate_eps

    chosen = {}
    for name, amp in (("bold", 0.45), ("faint", 0.06)):  # 16x16: the tiny recipe, radii 0.1, 0.05, 0.025
        x, y = _stripes(800, amp, 0, noise=0.01)
        cfg = resolve_defaults(RunConfig(dataset="npz:/same/name.npz"), x.shape[1:], len(y), False)
        res = calibrate_eps(torch.from_numpy(x), y, K, train_recipe(cfg, "natural"), train_recipe(cfg, "pgd"),
                            device=torch.device("cpu"))
        chosen[name] = res
        assert res["natural_accuracy"] > 0.4, res  # the reference learned (chance 0.1)
    assert chosen["bold"]["eps"] == 0.1 and chosen["bold"]["fallback"] is False, chosen["bold"]
    from audit.pipeline import _recipe_warnings

    gave_up = {"eps": {"source": "calibrated", "fallback": True, "reason": "eps 0.025, the smallest tried: ..."}}
    assert _recipe_warnings(gave_up) == ["attack radius: eps 0.025, the smallest tried: ..."]
    assert _recipe_warnings({"eps": {"source": "calibrated", **chosen["bold"]}}) == []
    assert chosen["faint"]["eps"] <= 0.05, chosen["faint"]  # a radius near the stripes' amplitude erases them
    assert len(chosen["faint"]["tried"]) >= 2 and "eps" in chosen["faint"]["reason"]
    # a radius that passes at a check is taken there, without the rest of its training; one that fails is
    # never given up early (faint stripes learn late)
    # the search tries the ladder's (upper) middle first, then halves the rest by each verdict
    assert [t["eps"] for t in chosen["bold"]["tried"]] == [0.05, 0.1]
    assert [t["eps"] for t in chosen["faint"]["tried"]][0] == 0.05
    bold = chosen["bold"]["tried"][-1]
    assert bold["accepted_at"] == bold["epochs_run"] < bold["epochs"] and bold["checks"][-1][0] == bold["epochs_run"]
    assert f"after {bold['epochs_run']} of its {bold['epochs']} epochs" in chosen["bold"]["reason"]
    assert all(t["epochs_run"] == t["epochs"] for t in chosen["faint"]["tried"] if t["accepted_at"] is None)


def test_a_collapsed_natural_model_is_retried_named_and_left_out(tmp_path):
    """A natural model that cannot learn (a learning rate of 1e-6 for 2 epochs) fails its checks on every
    try: the run retrains it twice, then completes naming it, and none of its signals is chosen."""
    import json

    from audit.pipeline import run_audit

    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, lr=1e-6, cv_lr=0.2, epochs=2, eps=0.1,
                              robust_epochs=20),
                    tmp_path / "run", progress=False)
    h = man["health"]
    assert h["failed"]["natural"][0] == "beats_chance" and h["ok"] is False
    assert [a["stage"] for a in h["attempts"]["natural"]] == ["train_natural", "train_natural_try2", "train_natural_try3"]
    assert "learning rate 1e-06 -> 5e-07" in h["attempts"]["natural"][0]["retry"]
    assert any(w.startswith("natural model failed beats_chance") and "after 3 trainings" in w for w in man["warnings"])
    sel = man["signal_selection"]
    natural_signals = {"aum_natural", "aum_early", "self_influence", "steps_to_flip"}
    assert not natural_signals & set(sel["members"]) and natural_signals <= set(sel["not_eligible"])
    assert man["metrics"]["noise_auroc"] > 0.95  # the healthy models still find the noise
    assert (tmp_path / "run" / "checkpoints" / "natural.pt").exists()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["health"] == h
    from audit.commands.run import summary_lines

    text = "\n".join(summary_lines(man, "RUN"))
    assert "warning: natural model failed beats_chance" in text and "natural model retrained 2x" in text
    # an attempt that stopped early (a collapsed augmented training) says so before its retry
    h["attempts"]["aug"] = [{"stage": "train_aug", "failed": ["beats_chance"], "retry": "learning rate 0.1 -> 0.05",
                             "stopped": "its training accuracy fell back to chance: stopped after epoch 12 of 25"},
                            {"stage": "train_aug_try2", "failed": [], "retry": None}]
    assert ("aug model retrained 1x after failed checks (its training accuracy fell back to chance: stopped after "
            "epoch 12 of 25; learning rate 0.1 -> 0.05)") in summary_lines(man, "RUN")


def test_a_natural_model_that_did_not_fit_goes_on_from_its_weights(tmp_path, monkeypatch):
    """``fits`` fails (the bound raised past 100%): each retry trains the added epochs from the attempt's
    weights, not from the start, and the final model's records are the attempts' laid end to end."""
    from audit.io import load_arrays
    from audit.pipeline import run_audit

    monkeypatch.setattr(health, "FIT_MIN", 1.01)
    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1, epochs=6), tmp_path / "run",
                    progress=False)
    tries = man["health"]["attempts"]["natural"]
    assert [a["stage"] for a in tries] == ["train_natural", "train_natural_try2", "train_natural_try3"]
    assert tries[0]["retry"] == "epochs 6 -> 12, the 6 more from this attempt's weights"
    assert tries[1]["retry"] == "epochs 12 -> 24, the 12 more from this attempt's weights"
    assert man["health"]["failed"]["natural"] == ["fits"]  # no model fits 101%: named after its retries
    cache = tmp_path / "run" / ".cache"
    a1, a2, a3 = (load_arrays(cache / f"{n}.npz") for n in ("train_natural", "train_natural_try2", "train_natural_try3"))
    assert a1["margin"].shape[0] == 6 and a2["margin"].shape[0] == 12 and a3["margin"].shape[0] == 24
    np.testing.assert_array_equal(a2["margin"][:6], a1["margin"])
    np.testing.assert_array_equal(a3["lrs"][:12], a2["lrs"])
    assert len(a3["tracin_weights"]) == 12 and a3["train_seconds"] > a2["train_seconds"] > a1["train_seconds"]
    assert a3["correct"][-1].mean() >= a1["correct"][-1].mean()  # the continued model fits more of its labels
    # a rerun whose first attempt comes from the cache (its weights from its last TracIn checkpoint) goes on
    # from the same weights
    for n in ("train_natural_try2", "train_natural_try3"):
        for ext in ("npz", "json"):
            (cache / f"{n}.{ext}").unlink()
    again = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1, epochs=6), tmp_path / "run",
                      progress=False)
    assert again["stages"]["train_natural"]["status"] == "cached" and again["stages"]["train_natural_try2"]["status"] == "done"
    b2 = load_arrays(cache / "train_natural_try2.npz")
    np.testing.assert_array_equal(b2["margin"], a2["margin"])
    # it went on from the weights, not from the start: the first added epoch is far better than a first epoch
    assert a2["correct"][6].mean() > a1["correct"][:2].mean() + 0.3


def test_a_memorizing_robust_model_still_flags_with_a_stated_reason(tmp_path):
    """At a radius of 1e-4 PGD-AT is natural training: it fits every label and is not robust. Its checks
    fail on every try, its errors do not cap the flags, and the run says why it flagged what it did."""
    from audit.pipeline import run_audit

    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=1e-4, robust_epochs=20),
                    tmp_path / "run", progress=False)
    h, f = man["health"], man["flagging"]
    assert "robust" in h["failed"]["pgd"]
    assert len(h["attempts"]["pgd"]) == 3 and all(a["retry"] for a in h["attempts"]["pgd"][:2])
    assert f["rule_before_canaries"] == "out_of_sample" and "no robust model passed its checks (pgd)" in f["reason"]
    m = man["metrics"]
    # the random flips score like the canaries: the count is the geometric mean of cleanlab's estimate and
    # the canaries' count (which runs under the truth here), and the run says both steps
    assert f["rule"] == "canary_count" and f["out_of_sample"] / 3 <= f["canary_count"] < f["out_of_sample"]
    assert f["n"] == round((f["out_of_sample"] * f["canary_count"]) ** 0.5) > 100
    assert m["num_flagged_train"] >= f["n"]  # + flagged canary sources
    assert m["noise_recall"] > 0.8 and m["noise_precision"] > 0.6
    assert any(w.startswith("flagging: no robust model passed its checks (pgd); ") and "flagged the geometric mean "
               f"of the two, sqrt({f['out_of_sample']} x {f['canary_count']}) = {f['n']}" in w
               and "estimate alone" not in w for w in man["warnings"])
    assert not {"robust_margin_pgd", "robust_aum_pgd"} & set(man["signal_selection"]["members"])


def test_image_size_trains_at_a_lower_resolution_and_the_run_reads_it_back(tmp_path):
    """``--image-size 12`` audits the 8x8 digits at 12x12 (any size works; the bundled set is small): the
    models see 12x12 images, the manifest says so, and the run directory returns the pixels it trained on."""
    from audit.pipeline import run_audit
    from audit.rundir import RunDir

    tiny = dict(dataset="digits", noise=0.1, seed=0, epochs=3, robust_epochs=2, cv_epochs=3, folds=2, eps=0.1,
                steps=2, eval_steps=3, tracin_checkpoints=1, knn_k=5, image_size=12)
    man = run_audit(RunConfig(**tiny), tmp_path / "run", progress=False)
    assert man["dataset"]["shape"] == [1, 12, 12] and man["config"]["image_size"] == 12
    ds = RunDir(tmp_path / "run").dataset()
    assert ds.images.shape[1:] == (1, 12, 12) and ds.extra["resized_from"] == [8, 8]
    from audit.data import load_dataset

    src = load_dataset("digits")
    big = src.resized(16)
    assert big.images.shape[1:] == (1, 16, 16) and big.fingerprint() != src.fingerprint()
    assert abs(float(big.images.mean()) - float(src.images.mean())) < 2.0  # brightness kept
    assert src.resized(8) is src


def test_when_both_estimates_find_nothing_the_canaries_set_the_threshold(tmp_path, monkeypatch):
    """Never a silent zero: with the out-of-sample estimate and the robust bound both at zero (forced
    here), the rows scoring above half of the planted canaries are flagged, and the run says so."""
    from audit.pipeline import run_audit
    from audit.signals import table

    real = table.flag_count
    monkeypatch.setattr(table, "flag_count", lambda *a, **k: {**real(*a, **k), "n": 0, "out_of_sample": 0,
                                                               "rule": "min"})
    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1), tmp_path / "run", progress=False)
    f, m = man["flagging"], man["metrics"]
    assert f["rule"] == "canaries" and "above half of the" in f["reason"]
    ex = pd.read_parquet(tmp_path / "run" / "examples.parquet")
    audited = ex[(ex["split"] == "train") & ~ex["held_out_as_canary"]]
    assert int(audited["is_label_issue"].sum()) == f["n"] > 30 and m["noise_precision"] > 0.7
    # the canaries' sources (not audited this run) are flagged where their out-of-sample score reaches
    # the cut, so the training count may be a few more than n
    n_sources = int((ex["split"] == "train").sum() - len(audited))
    assert f["n"] <= m["num_flagged_train"] <= f["n"] + n_sources
    assert any(w.startswith("flagging: the out-of-sample estimate and the robust models' errors found no")
               for w in man["warnings"])


def test_canary_count_counts_real_rows_that_score_like_the_canaries():
    from audit.signals.table import canary_count

    clean = np.linspace(0.0, 0.5, 180)
    noisy = np.linspace(0.6, 1.0, 20)  # mislabelled real rows, scored like the canaries
    canaries = np.linspace(0.61, 0.99, 9)
    score = np.r_[clean, noisy, canaries]
    is_canary = np.r_[np.zeros(200, bool), np.ones(9, bool)]
    assert abs(canary_count(score, is_canary) - 20) <= 2
    # subtler real noise scores below the canaries: the count undercounts, which is why it is only a floor
    assert canary_count(np.r_[clean, noisy - 0.45, canaries], is_canary) == 0
    assert canary_count(score, np.zeros(209, bool)) == 0


def test_a_robust_model_that_fit_some_noise_gets_the_canary_floor(tmp_path, monkeypatch):
    """When the robust errors set the count (``min``) but more real rows score like the planted canaries,
    the canaries' count is flagged, at most the out-of-sample estimate, and the run says why."""
    from audit.pipeline import run_audit
    from audit.signals import table

    real = table.flag_count
    monkeypatch.setattr(table, "flag_count", lambda *a, **k: {**real(*a, **k), "n": 5, "rule": "min",
                                                               "robust_errors": {"pgd": 5}})
    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1), tmp_path / "run", progress=False)
    f, m = man["flagging"], man["metrics"]
    assert f["rule"] == "canary_floor" and f["n"] == min(f["out_of_sample"], f["canary_count"]) > 40
    assert "refused 5 training labels, fewer than the" in f["reason"] and m["noise_precision"] > 0.8
    assert any(w.startswith("flagging: the pgd model refused 5") for w in man["warnings"])


def test_where_the_canaries_do_not_corroborate_the_estimate_sets_the_count_with_a_caution(tmp_path, monkeypatch):
    """Real noise subtler than the canaries (few real rows score like them): cleanlab's estimate stays the
    count, and the run cautions that it runs above the truth."""
    from audit.pipeline import run_audit
    from audit.signals import table

    monkeypatch.setattr(table, "canary_count", lambda score, is_canary: 1)
    man = run_audit(RunConfig(dataset="digits", models=("natural",), noise=0.1, seed=0), tmp_path / "run",
                    progress=False)
    f = man["flagging"]
    assert f["rule"] == "out_of_sample" and f["canary_count"] == 1 and f["n"] == f["out_of_sample"] > 3
    assert "tends to run above the true number" in f["caution"] and f"last of the {f['n']} flags" in f["caution"]
    assert any(w == f"flagging: {f['caution']}" for w in man["warnings"])


def test_where_robust_errors_set_the_count_but_the_canaries_do_not_corroborate_the_run_cautions(tmp_path, monkeypatch):
    """A robust model's errors set the count, few real rows score like the canaries (subtler noise, or
    clean rows a weak model refuses): the count stays, and the run says its last flags are the least
    certain, with the model's test accuracy."""
    from audit.pipeline import run_audit
    from audit.signals import table

    monkeypatch.setattr(table, "canary_count", lambda score, is_canary: 1)
    man = run_audit(RunConfig(dataset="digits", noise=0.1, seed=0, eps=0.1), tmp_path / "run", progress=False)
    f = man["flagging"]
    assert f["rule"] == "min" and f["n"] == f["robust_errors"]["pgd"] < f["out_of_sample"] and f["n"] > 3
    assert f"the pgd model's {f['n']} refused training labels, but only 1 real row scores" in f["caution"]
    assert "accurate on the test rows" in f["caution"] and f"last of the {f['n']} flags" in f["caution"]
    assert any(w == f"flagging: {f['caution']}" for w in man["warnings"])


def test_a_training_that_collapsed_to_chance_is_told_from_one_that_dips_or_learns_slowly():
    """health.collapsed: learned (an epoch at chance_bound or more), then COLLAPSE_EPOCHS epochs back at chance."""
    from audit.health import COLLAPSE_EPOCHS, chance_bound, collapsed

    chance = 0.1
    # the development suite's inverted-MNIST augmented model: learned to 0.65, collapsed at epoch 11
    inv = [0.11, 0.10, 0.12, 0.14, 0.40, 0.53, 0.61, 0.60, 0.62, 0.61, 0.65, 0.14] + [0.09] * 63
    first = next(k for k in range(1, len(inv) + 1) if collapsed(inv[:k], chance))
    assert first == 11 + COLLAPSE_EPOCHS  # stopped after five epochs at chance, not 75
    assert not collapsed(inv[:first - 1], chance)
    # an MLP's dip that recovered (learning rate 0.5 on digits): never over the bound, never stopped
    dip = [0.11, 0.22, 0.26, 0.30, 0.14, 0.11, 0.15, 0.15, 0.19, 0.27, 0.28, 0.28, 0.30, 0.35]
    assert not any(collapsed(dip[:k], chance) for k in range(1, len(dip) + 1))
    # a slow learner that never left chance for long enough (colour PGD-AT, half its epochs)
    slow = [0.04, 0.09, 0.09, 0.08, 0.08, 0.08, 0.09, 0.08, 0.12, 0.12, 0.12, 0.13, 0.15, 0.18]
    assert not any(collapsed(slow[:k], chance) for k in range(1, len(slow) + 1))
    # learned, and four epochs at chance: not yet; a fifth: collapsed
    learned = [0.2, chance_bound(chance), 0.5] + [0.1] * 4
    assert not collapsed(learned, chance) and collapsed(learned + [0.1], chance)
    assert not collapsed(learned + [0.1], float("nan"))  # no labels, no chance level: never


def test_the_engine_stops_where_the_accuracy_rule_says_and_keeps_the_epochs_run():
    """train_model(stop_on_accuracy=): called with the training accuracy of every epoch so far; the records
    hold the epochs run."""
    import torch
    from sklearn.datasets import load_digits

    from audit.train.engine import TrainSpec, train_model
    from audit.train.models import build_model

    d = load_digits()
    x = (d.images[:300] * 16).clip(0, 255).astype(np.uint8)[:, None]
    y = torch.as_tensor(d.target[:300])
    seen = []

    def rule(acc):
        seen.append(np.asarray(acc).copy())
        return len(acc) == 3

    spec = TrainSpec(method="natural", arch="mlp", epochs=8, lr=0.1, batch_size=64, width=0.25)
    torch.manual_seed(0)
    res = train_model(build_model("mlp", (1, 8, 8), 10, 0.25), x, y, spec, device=torch.device("cpu"),
                      progress=False, stop_on_accuracy=rule)
    assert len(res.lrs) == 3 and res.correct.shape == (3, 300) and res.margin.shape == (3, 300)
    assert [len(a) for a in seen] == [1, 2, 3]
    np.testing.assert_allclose(seen[-1], res.correct.mean(1))
