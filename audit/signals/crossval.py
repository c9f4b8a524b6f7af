"""K-fold cross-validation of the natural model, repeated R times with new folds.

One set of trainings serves three purposes:

* out-of-sample predicted probabilities for every training example (each is held out once per
  repeat), which cleanlab needs;
* memorization and influence as Feldman & Zhang (2020) define them, because each fold model is
  trained on a random subset S: mem(i) = P[h(x_i) = y_i | i ∈ S] − P[h(x_i) = y_i | i ∉ S];
* training dynamics (AUM) recorded inside every fold at no extra cost.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold
from tqdm.auto import tqdm

from audit.rows import subset
from audit.signals.util import softmax
from audit.train.engine import TrainSpec, train_model
from audit.train.evaluate import infer
from audit.train.models import build_model


def fold_masks(labels: np.ndarray, folds: int, repeats: int, seed: int) -> np.ndarray:
    """Membership of each fold model's training set: bool (repeats × folds, N); True = trained on.
    Stratified by label where every class has at least ``folds`` rows. (Canaries need no grouping with
    their sources: the sources leave training, see :mod:`audit.signals.canaries`.)"""
    n = len(labels)
    masks = []
    for r in range(repeats):
        counts = np.bincount(labels)
        stratify = counts[counts > 0].min() >= folds
        rs = seed + 1000 * r
        splitter = (StratifiedKFold if stratify else KFold)(n_splits=folds, shuffle=True, random_state=rs)
        for tr, _ in splitter.split(np.zeros(n), labels if stratify else None):
            m = np.zeros(n, bool)
            m[tr] = True
            masks.append(m)
    return np.stack(masks)


def half_masks(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` training sets of ⌊n/2⌋ random rows each (bool (count, N)), seeded apart from the folds."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919, n]))
    out = np.zeros((count, n), bool)
    for i in range(count):
        out[i, rng.permutation(n)[:n // 2]] = True
    return out


def mean_diff_se(in_vals: np.ndarray, in_mask: np.ndarray):
    """Per column: mean over rows where ``in_mask`` minus mean over rows where not, and its standard
    error sqrt(s²_in / n_in + s²_out / n_out) with sample variances (ddof 1; NaN with fewer than two
    rows on a side; the difference is NaN with none)."""
    out_mask = ~in_mask
    n_in, n_out = in_mask.sum(0), out_mask.sum(0)
    m_in = np.where(n_in > 0, (in_vals * in_mask).sum(0) / np.maximum(n_in, 1), np.nan)
    m_out = np.where(n_out > 0, (in_vals * out_mask).sum(0) / np.maximum(n_out, 1), np.nan)
    v_in = np.where(n_in > 1, ((in_vals - m_in) ** 2 * in_mask).sum(0) / np.maximum(n_in - 1, 1), np.nan)
    v_out = np.where(n_out > 1, ((in_vals - m_out) ** 2 * out_mask).sum(0) / np.maximum(n_out - 1, 1), np.nan)
    se = np.sqrt(v_in / np.maximum(n_in, 1) + v_out / np.maximum(n_out, 1))
    return m_in - m_out, se


def memorization_estimates(train_probs: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """From the fold models' probabilities ``train_probs`` (M, N, K) on every training row and their
    training sets ``masks`` (M, N): ``oos_probs`` (N, K), the mean over the models that held each row
    out; Feldman–Zhang ``memorization`` = P[h(x_i) = y_i | i ∈ S] − P[h(x_i) = y_i | i ∉ S] from 0/1
    correctness (argmax, ties to the lowest class) with its ``memorization_se``; ``memorization_soft``,
    the same difference of the given label's probability."""
    n = len(labels)
    held_out = ~masks
    oos = (train_probs * held_out[:, :, None]).sum(0) / held_out.sum(0)[:, None]
    correct = (train_probs.argmax(2) == labels[None]).astype(np.float64)
    mem, mem_se = mean_diff_se(correct, masks)
    mem_soft, _ = mean_diff_se(train_probs[:, np.arange(n), labels].astype(np.float64), masks)
    return {"oos_probs": oos.astype(np.float32), "memorization": mem.astype(np.float32),
            "memorization_se": mem_se.astype(np.float32), "memorization_soft": mem_soft.astype(np.float32)}


def cross_validate(
    images: torch.Tensor,
    labels: np.ndarray,
    test_images: torch.Tensor,
    spec: TrainSpec,
    num_classes: int,
    *,
    folds: int,
    repeats: int,
    seed: int,
    device: torch.device,
    progress: bool = True,
    subsets: int = 0,
) -> dict[str, np.ndarray]:
    """Train ``folds × repeats`` natural models on uint8 ``images`` (N, C, H, W), and ``subsets``
    more, each on a random half of the rows (Feldman & Zhang's estimator: with them every row is held
    out by several models, so ``memorization_se`` and the pairs' ``fz_influence_se`` are finite).
    The subset models join the Feldman–Zhang estimates only: ``oos_probs`` and ``cv_aum`` stay those
    of the K folds (cleanlab's documented workflow).

    Returns arrays:
        ``oos_probs`` (N, K): out-of-sample probabilities averaged over repeats;
        ``memorization``, ``memorization_se`` (N,): Feldman–Zhang estimate from 0/1 correctness;
        ``memorization_soft`` (N,): the same with the given label's probability (lower variance);
        ``cv_aum``, ``cv_forgetting`` (N,): training dynamics averaged over the folds that trained on i;
        ``test_probs`` (M, N_test, K) and ``masks`` (M, N) for train→test influence.
    """
    shape = tuple(images.shape[1:])
    fold = fold_masks(labels, folds, repeats, seed)
    masks = np.concatenate([fold, half_masks(len(labels), subsets, seed)]) if subsets else fold
    n, k, m = len(labels), num_classes, len(masks)
    y = torch.as_tensor(labels, dtype=torch.long)
    train_probs = np.zeros((m, n, k), np.float32)
    test_probs = np.zeros((m, len(test_images), k), np.float32)
    aum = np.zeros((m, n), np.float32)
    forgetting = np.zeros((m, n), np.float32)
    for f in tqdm(range(m), desc="cross-validation", disable=None if progress else True, unit="fold",
                  mininterval=0.1 if sys.stderr.isatty() else 30.0):
        tr = np.flatnonzero(masks[f])
        torch.manual_seed(spec.seed + 17 * (f + 1))
        model = build_model(spec.arch, shape, k, spec.width)
        fs = TrainSpec(**{**spec.__dict__, "seed": spec.seed + 17 * (f + 1)})
        res = train_model(model, subset(images, tr), y[tr], fs, device=device, desc=f"fold {f + 1}/{m}", progress=progress)
        dyn = res.dynamics()
        aum[f, tr] = dyn["aum"]
        forgetting[f, tr] = dyn["forgetting"]
        train_probs[f] = softmax(infer(res.model, images, device)[0])
        if len(test_images):
            test_probs[f] = softmax(infer(res.model, test_images, device)[0])
    est = memorization_estimates(train_probs, masks, labels)
    kf = len(fold)
    est["oos_probs"] = memorization_estimates(train_probs[:kf], fold, labels)["oos_probs"] if subsets else est["oos_probs"]
    n_in = fold.sum(0)
    return {
        **est,
        "cv_aum": ((aum[:kf] * fold).sum(0) / np.maximum(n_in, 1)).astype(np.float32),
        "cv_forgetting": ((forgetting[:kf] * fold).sum(0) / np.maximum(n_in, 1)).astype(np.float32),
        "test_probs": test_probs,
        "masks": masks,
    }


def feldman_zhang_influence(test_probs: np.ndarray, masks: np.ndarray, test_labels: np.ndarray,
                            query: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """infl(i, j) = P[h(x_j) = y_j | i ∈ S] − P[h(x_j) = y_j | i ∉ S] for test ``query`` (Q,) and
    training candidates ``cand`` (Q, k), estimated from the fold models with the true-label
    probability. Returns (influence, standard error), each (Q, k); the SE is NaN with one model out."""
    p = test_probs[:, query, test_labels[query]]  # (M, Q)
    mk = masks[:, cand]  # (M, Q, k)
    vals = np.broadcast_to(p[:, :, None], mk.shape)
    infl, se = mean_diff_se(vals.reshape(len(masks), -1), mk.reshape(len(masks), -1))
    return infl.reshape(cand.shape).astype(np.float32), se.reshape(cand.shape).astype(np.float32)
