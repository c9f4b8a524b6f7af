"""Exact tests of the core math: TracIn's closed form, the Feldman–Zhang estimator, the canaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from audit.data import TRAIN, load_dataset
from audit.signals.canaries import make_canaries, plant_canaries
from audit.signals.crossval import (
    feldman_zhang_influence,
    fold_masks,
    mean_diff_se,
    memorization_estimates,
)
from audit.signals.influence import tracin
from audit.train.engine import TrainSpec, train_model
from audit.train.models import build_model


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    tr = ds.split_indices(TRAIN)
    return np.asarray(ds.images[tr]), ds.labels[tr].astype(np.int64)


# -- TracIn ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracin_case(digits):
    images, labels = digits
    x, y = torch.from_numpy(images[:160]), labels[:160]
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, width=0.125)
    spec = TrainSpec(epochs=3, batch_size=32, lr=0.05, tracin_checkpoints=3, seed=0)
    res = train_model(model, x, torch.as_tensor(y), spec, device=torch.device("cpu"), progress=False)
    ckpts = [(w, state) for _, w, state in res.tracin]
    assert len(ckpts) == 3 and len({round(w, 6) for w, _ in ckpts}) > 1  # distinct weights: all are used
    return build_model("mlp", (1, 8, 8), 10, width=0.125), ckpts, x, y


def _head_grads(model, state, x, y) -> torch.Tensor:
    """Per-example gradient of the cross-entropy w.r.t. the head's weight and bias, by autograd (float64)."""
    model.load_state_dict(state)
    model.double().eval()
    out = []
    for i in range(len(y)):
        xi = x[i:i + 1].double() / 255.0
        loss = F.cross_entropy(model(xi), torch.tensor([int(y[i])]))
        gw, gb = torch.autograd.grad(loss, [model.head.weight, model.head.bias])
        out.append(torch.cat([gw.flatten(), gb]))
    model.float()
    return torch.stack(out)


def test_tracin_closed_form_matches_autograd_over_all_checkpoints(tracin_case):
    model, ckpts, x, y = tracin_case
    query = np.arange(150, 160)
    cand = np.stack([np.arange(20), np.arange(20, 40)[::-1]] * 5)  # (10, 20) candidate rows per query
    self_infl, pair = tracin(model, ckpts, x[:150], y[:150], torch.device("cpu"), x[query], y[query], cand)
    ref_self, ref_pair = np.zeros(150), np.zeros(cand.shape)
    for w, state in ckpts:
        g = _head_grads(model, state, x, y).numpy()
        ref_self += w * (g[:150] ** 2).sum(1)
        ref_pair += w * np.einsum("qd,qkd->qk", g[query], g[cand])
    np.testing.assert_allclose(self_infl, ref_self, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(pair, ref_pair, rtol=1e-5, atol=1e-6)
    assert (ref_pair > 0).any() and (ref_pair < 0).any()  # both proponents and opponents occur


def test_tracin_matches_captum_tracincp(tracin_case, tmp_path):
    captum = pytest.importorskip("captum.influence")
    model, ckpts, x, y = tracin_case
    paths = []
    for i, (w, state) in enumerate(ckpts):
        paths.append(str(tmp_path / f"c{i}.pt"))
        torch.save({"w": w, "state": state}, paths[-1])

    def load(m, path):
        d = torch.load(path, weights_only=True)
        m.load_state_dict(d["state"])
        return d["w"]

    xf, yt = x.float() / 255.0, torch.as_tensor(y)
    net = build_model("mlp", (1, 8, 8), 10, width=0.125)
    oracle = captum.TracInCP(net, torch.utils.data.TensorDataset(xf[:40], yt[:40]), paths, checkpoints_load_func=load,
                             loss_fn=torch.nn.CrossEntropyLoss(reduction="none"), batch_size=8, layers=["head"],
                             sample_wise_grads_per_batch=False)
    ref_self = oracle.self_influence(torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xf[:40], yt[:40]), batch_size=8), show_progress=False).numpy()
    ref_pair = oracle.influence((xf[150:153], yt[150:153])).numpy()  # (3, 40)
    self_infl, pair = tracin(model, ckpts, x[:40], y[:40], torch.device("cpu"), x[150:153], y[150:153],
                             np.tile(np.arange(40), (3, 1)))
    np.testing.assert_allclose(self_infl, ref_self, rtol=1e-5)
    np.testing.assert_allclose(pair, ref_pair, rtol=1e-5, atol=1e-6)


# -- Feldman–Zhang -----------------------------------------------------------------------------------

def _fz_case():
    """4 fold models, 2 training rows, 3 classes; labels (0, 2). Row 0 is trained on by models 0, 1;
    row 1 by models 1, 2."""
    masks = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], bool)
    probs = np.array([
        [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]],
        [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]],
        [[0.2, 0.7, 0.1], [0.2, 0.2, 0.6]],
        [[0.5, 0.3, 0.2], [0.3, 0.6, 0.1]],
    ])
    return probs, masks, np.array([0, 2])


def test_feldman_zhang_memorization_by_hand():
    probs, masks, labels = _fz_case()
    est = memorization_estimates(probs, masks, labels)
    # row 0: correct (1, 1 | 0, 1) -> 1 - 0.5; SE = sqrt(0/2 + var(0, 1)/2) = sqrt(0.5/2)
    # row 1: correct (1, 1 | 0, 0) -> 1 - 0; SE 0
    np.testing.assert_allclose(est["memorization"], [0.5, 1.0], atol=1e-7)
    np.testing.assert_allclose(est["memorization_se"], [0.5, 0.0], atol=1e-7)
    # soft: row 0 (0.6 + 0.8) / 2 - (0.2 + 0.5) / 2; row 1 (0.7 + 0.6) / 2 - (0.2 + 0.1) / 2
    np.testing.assert_allclose(est["memorization_soft"], [0.35, 0.5], atol=1e-7)
    # out-of-sample: the mean over the models that held the row out (row 0: models 2, 3; row 1: 0, 3)
    np.testing.assert_allclose(est["oos_probs"], [[0.35, 0.5, 0.15], [0.4, 0.45, 0.15]], atol=1e-7)


def test_mean_diff_se_edge_cases():
    vals = np.array([[0.9], [0.7], [0.2], [0.4]])
    diff, se = mean_diff_se(vals, np.array([[1], [1], [0], [0]], bool))
    assert np.isclose(diff[0], 0.5) and np.isclose(se[0], np.sqrt(0.02 / 2 + 0.02 / 2))
    diff, se = mean_diff_se(vals, np.array([[1], [1], [1], [0]], bool))  # one model out: no variance
    assert np.isclose(diff[0], 0.6 - 0.4) and np.isnan(se[0])
    diff, se = mean_diff_se(vals, np.ones((4, 1), bool))  # never out: no estimate
    assert np.isnan(diff[0]) and np.isnan(se[0])


def test_feldman_zhang_influence_by_hand():
    test_probs = np.array([[[0.9, 0.1]], [[0.7, 0.3]], [[0.2, 0.8]], [[0.4, 0.6]]])  # (M=4, 1 test row, K=2)
    masks = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 0, 1]], bool)  # (4 models, 3 training rows)
    infl, se = feldman_zhang_influence(test_probs, masks, np.array([0]), np.array([0]), np.array([[0, 1, 2]]))
    # candidate 0: in (0.9, 0.7) out (0.2, 0.4); 1: in (0.9, 0.7, 0.2) out (0.4); 2: in (0.7, 0.2, 0.4) out (0.9)
    np.testing.assert_allclose(infl, [[0.5, 0.6 - 0.4, 1.3 / 3 - 0.9]], atol=1e-6)
    assert np.isclose(se[0, 0], np.sqrt(0.02)) and np.isnan(se[0, 1]) and np.isnan(se[0, 2])


# -- canaries ----------------------------------------------------------------------------------------

def test_make_canaries_flips_labels_of_exact_copies(digits):
    images, labels = digits
    img, lab, src = make_canaries(images, labels, 10, 0.03, seed=0)
    assert len(src) == round(0.03 * len(labels)) == 40 and len(np.unique(src)) == 40
    assert np.array_equal(src, np.sort(src)) and np.array_equal(img, images[src])
    assert (lab != labels[src]).all() and lab.min() >= 0 and lab.max() <= 9 and lab.dtype == np.int64
    again = make_canaries(images, labels, 10, 0.03, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((img, lab, src), again))
    assert not np.array_equal(make_canaries(images, labels, 10, 0.03, seed=1)[2], src)
    assert len(make_canaries(images, labels, 10, 0.0, seed=0)[2]) == 0
    assert len(make_canaries(images, labels, 10, 0.001, seed=0)[2]) == 10  # at least 10
    assert len(make_canaries(images[:50], labels[:50], 10, 0.9, seed=0)[2]) == 12  # at most N // 4


def test_duplicated_images_never_become_canaries(digits):
    images, labels = digits
    dup = np.concatenate([images[:100], images[40:100]])  # rows 40-99 occur twice, rows 0-39 once
    _, _, src = make_canaries(dup, np.r_[labels[:100], labels[40:100]], 10, 0.25, seed=3)
    assert set(src) <= set(range(40)) and len(src) == 40


def _shifts_and_flips(images: np.ndarray, p: int) -> np.ndarray:
    """Every image of the augmentation family: shifts by up to p pixels (zero fill), each also mirrored."""
    n, c, h, w = images.shape
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
    out = [padded[:, :, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    out = np.concatenate(out)
    return np.concatenate([out, out[..., ::-1]])


def test_no_training_image_augments_into_a_canary(digits):
    """The fair judge: no remaining training image, under any shift of up to 2 pixels or mirror, equals
    a canary; the canaries' sources are gone from training, and canaries are the last rows."""
    images, labels = digits
    cs = plant_canaries(images, labels, 10, 0.03, seed=0)
    real = cs.images[~cs.is_canary]
    assert len(cs.labels) == len(labels) and cs.is_canary.sum() == 40 and cs.is_canary[-40:].all()
    assert np.array_equal(real, images[cs.real_rows]) and np.array_equal(cs.labels[~cs.is_canary], labels[cs.real_rows])
    assert not set(cs.real_rows) & set(cs.source) and np.array_equal(cs.clean_labels, labels[cs.source])
    seen = {a.tobytes() for a in _shifts_and_flips(real, p=2)}
    assert not any(c.tobytes() in seen for c in cs.images[cs.is_canary])


def test_folds_hold_each_row_out_once_per_repeat_stratified():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    masks = fold_masks(labels, folds=4, repeats=2, seed=0)
    assert masks.shape == (8, 200)
    assert ((~masks).sum(0) == 2).all()  # each row held out once per repeat
    for m in masks:  # stratified: every class's held-out share within one row of a quarter
        for c in range(4):
            assert abs((~m & (labels == c)).sum() - (labels == c).sum() / 4) <= 1
    assert not np.array_equal(masks[0], masks[4])  # the repeat draws new folds


def test_subset_models_make_the_standard_errors_finite_and_leave_the_folds_alone():
    """--subset-models: random-half models join the Feldman-Zhang estimates only; the out-of-sample
    probabilities and fold dynamics are those of the K folds, unchanged."""
    import torch

    from audit.signals.crossval import cross_validate, half_masks
    from audit.train.engine import TrainSpec

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    images = (rng.integers(0, 60, (60, 1, 4, 4)) + 60 * labels[:, None, None, None]).astype(np.uint8)
    spec = TrainSpec(method="natural", arch="mlp", width=0.1, epochs=3, batch_size=16, lr=0.05, seed=0)
    kw = dict(folds=2, repeats=1, seed=0, device=torch.device("cpu"), progress=False)
    plain = cross_validate(torch.from_numpy(images), labels, torch.from_numpy(images[:5]), spec, 3, **kw)
    more = cross_validate(torch.from_numpy(images), labels, torch.from_numpy(images[:5]), spec, 3, subsets=4, **kw)
    assert np.array_equal(plain["oos_probs"], more["oos_probs"]) and np.array_equal(plain["cv_aum"], more["cv_aum"])
    assert np.isnan(plain["memorization_se"]).all()  # each row held out by one fold model only
    m = more["masks"]
    assert m.shape == (6, 60)
    two_each_side = (m.sum(0) >= 2) & ((~m).sum(0) >= 2)  # where a standard error is defined
    assert np.array_equal(np.isfinite(more["memorization_se"]), two_each_side) and two_each_side.mean() == 0.9
    h = half_masks(60, 4, 0)
    assert (h.sum(1) == 30).all() and np.array_equal(h, half_masks(60, 4, 0)) and not np.array_equal(h[0], h[1])


def test_a_nan_signal_value_ranks_least_suspicious():
    """Issue #22 item 11: a row whose signal could not be computed ranks below every other row, not at 0.0
    (which, for a negated margin, was the second most suspicious place)."""
    import numpy as np

    from audit.signals.combine import rank01
    from audit.signals.registry import least_suspicious_nan

    neg_margin = np.array([-3.0, -0.5, np.nan, 0.8, -2.0, np.inf, -np.inf])
    fixed = least_suspicious_nan(neg_margin)
    assert np.isfinite(fixed).all()
    order = np.argsort(-fixed, kind="stable")
    assert order[0] == 5 and set(order[-2:]) == {2, 6}  # +inf most suspicious; NaN and -inf least
    np.testing.assert_array_equal(fixed[[0, 1, 3, 4]], neg_margin[[0, 1, 3, 4]])  # finite values untouched
    assert rank01(fixed)[2] == rank01(fixed).min() and rank01(neg_margin)[2] == 0.0
    assert (least_suspicious_nan(np.full(3, np.nan)) == least_suspicious_nan(np.full(3, np.nan))[0]).all()
