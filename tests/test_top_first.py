"""Colour runs judge the ladder's top radius on their own robust model (``audit.train.calibrate.TOP_FIRST``):
no subset calibration when it passes; when it fails, the subset ladder from the next radius, the robust
model trained again there and the natural model evaluated again, not retrained."""

from __future__ import annotations

import numpy as np
import pytest

from audit.config import RunConfig
from audit.io import load_arrays

# 5% noise and 16 natural epochs: the natural model fits 97.8% of the given labels on an AMD EPYC, far over
# the health check's 90% (6 epochs at 10% noise fit 89.4% there and failed it, 12 at 5% fit 92.8%; on an
# Intel CPU 6 at 10% passed): a margin no CPU's rounding closes
TINY = dict(noise=0.05, seed=0, epochs=16, robust_epochs=6, cv_epochs=4, aug_epochs=3, folds=2, steps=2, eval_steps=3,
            tracin_checkpoints=2, knn_k=5, threads=1)
TOP = 8 / 255


def _colour_npz(path, n: int = 240, classes: int = 4, seed: int = 0):
    """24x24 RGB (over 16x16, so the colour recipe): a dim random background and, per class, a coloured
    square in one quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = 0.15 + 0.3 * rng.random((n, 24, 24, 3))
    colour = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, 12 * r:12 * r + 12, 12 * c:12 * c + 12] += 0.35 * colour[y[i]]
    np.savez(path, images=(np.clip(x, 0, 1) * 255).round().astype(np.uint8), labels=y)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return _colour_npz(tmp_path_factory.mktemp("colour") / "blobs.npz")


def _count_natural_trainings(monkeypatch) -> list:
    import audit.stages as stages

    calls, real = [], stages.train_model

    def counted(model, images, labels, spec, **kw):
        if spec.method == "natural" and spec.augment == "none":
            calls.append(spec.epochs)
        return real(model, images, labels, spec, **kw)

    monkeypatch.setattr(stages, "train_model", counted)
    return calls


def test_a_colour_run_whose_top_radius_passes_needs_no_subset_calibration(spec, tmp_path):
    from audit.pipeline import run_audit

    man = run_audit(RunConfig(dataset=spec, **TINY), tmp_path / "run", progress=False)
    eps = man["recipe"]["eps"]
    assert eps["method"] == "top_first" and eps["value"] == man["config"]["eps"] == TOP and not eps["fallback"]
    (tried,) = eps["tried"]
    assert tried["eps"] == TOP and tried["accepted_at"] == tried["epochs"] == 6
    assert tried["judged_on"] == "test rows, the run's own model" and "no subset calibration" in eps["reason"]
    assert tried["robust_accuracy"] == round(man["metrics"]["pgd_test_accuracy"], 4) >= eps["need"]
    # the subset's natural reference trains (its learning rate may lower the run's); no subset PGD-AT
    assert man["stages"]["calibrate"]["status"] == "done" and eps["natural_lr"] == man["config"]["lr"]
    assert man["stages"]["calibrate_top"] == {**man["stages"]["calibrate_top"], "status": "done", "seconds": 0.0}
    assert man["status"] == "complete" and man["health"]["ok"]
    # a rerun recomputes nothing: the verdict is a cached stage like the others
    again = run_audit(RunConfig(dataset=spec, **TINY), tmp_path / "run", progress=False)
    assert {s: v["status"] for s, v in again["stages"].items() if s != "write"} == {
        s: "cached" for s in man["stages"] if s != "write"}
    assert again["recipe"]["eps"] == eps


def test_a_failed_top_radius_calibrates_below_it_and_evaluates_the_natural_model_again(spec, tmp_path, monkeypatch):
    import audit.train.calibrate as cal
    from audit.pipeline import run_audit

    real = cal.judge_top
    monkeypatch.setattr(cal, "judge_top", lambda eps, nat, rob, *a, **k: real(eps, nat, 0.0, *a, **k))
    natural = _count_natural_trainings(monkeypatch)
    man = run_audit(RunConfig(dataset=spec, **TINY), tmp_path / "fail", progress=False)
    eps = man["recipe"]["eps"]
    assert eps["method"] == "top_first" and eps["value"] < TOP and man["config"]["eps"] == eps["value"]
    top, *below = eps["tried"]
    assert top["eps"] == TOP and top["robust_accuracy"] == 0.0 and top["accepted_at"] is None
    assert below and below[0]["eps"] == cal.LADDERS["linf"]["airbench"][1] and "on a subset" in eps["reason"]
    assert eps["top"]["need"] > 0 and "kept only 0.000 test accuracy" in eps["reason"]
    # trained once per attempt (its fits retries go on from its weights), never again for the new radius
    assert natural[0] == TINY["epochs"] and len(natural) == len(man["health"]["attempts"]["natural"])
    assert man["status"] == "complete"
    # the failed PGD-AT training counts in the verdict's time (its own seconds, recorded beside the verdict)
    assert eps["top"]["training_seconds"] > 0
    assert man["stages"]["calibrate_top"]["seconds"] >= eps["top"]["training_seconds"]
    # the natural model's training is what a run at the final radius trains; its evaluation is at that radius
    direct = run_audit(RunConfig(dataset=spec, eps=eps["value"], **TINY), tmp_path / "direct", progress=False)
    a, b = (load_arrays(d / ".cache" / "train_natural.npz") for d in (tmp_path / "fail", tmp_path / "direct"))
    for k in ("margin", "loss", "correct", "train_logits", "test_logits", "adv_correct_test", "steps_to_flip"):
        assert np.array_equal(a[k], b[k]), k
    p, q = (load_arrays(d / ".cache" / "train_pgd.npz") for d in (tmp_path / "fail", tmp_path / "direct"))
    assert np.array_equal(p["margin"], q["margin"]) and np.array_equal(p["adv_correct_test"], q["adv_correct_test"])
    # a rerun keeps the verdict, the radius and every stage
    natural.clear()
    again = run_audit(RunConfig(dataset=spec, **TINY), tmp_path / "fail", progress=False)
    assert again["recipe"]["eps"] == eps and natural == []
    assert all(v["status"] == "cached" for s, v in again["stages"].items() if s != "write")
