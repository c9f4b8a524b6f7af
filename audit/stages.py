"""The pipeline's stages after training: evaluation, cross-validation, influence and pairs, outputs.

Each function takes the :class:`audit.pipeline.Run` and earlier stages' arrays and returns plain
arrays (cached by the orchestrator) or writes the final artifacts.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from audit.neighbors import knn
from audit.signals.crossval import cross_validate, feldman_zhang_influence
from audit.signals.influence import tracin
from audit.train.attacks import PGD
from audit.train.evaluate import adversarial_correct, infer, steps_to_flip

NEIGHBORS = 10  # neighbours kept per example as evidence for the app and for `category`


def eval_attack(cfg) -> PGD:
    """The evaluation attack: stronger than training (more steps, restarts)."""
    return PGD(eps=cfg.eps, step_size=2.5 * cfg.eps / cfg.eval_steps, steps=cfg.eval_steps, norm=cfg.norm,
               random_start=True, restarts=cfg.eval_restarts)


def evaluate_stage(run, model: torch.nn.Module, method: str) -> dict:
    """Logits and features on train (+ canaries) and test, adversarial correctness on test and, for
    the natural model, PGD steps to flip each training example."""
    cfg, dev = run.cfg, run.device
    tr_logits, tr_feat = infer(model, run.train_images, dev, features=True)
    te_logits, te_feat = infer(model, run.test_images, dev, features=True)
    torch.manual_seed(cfg.seed + 1)
    adv = adversarial_correct(model, run.test_images, torch.as_tensor(run.test_labels), eval_attack(cfg), dev)
    out = {"train_logits": tr_logits, "test_logits": te_logits, "adv_correct_test": adv,
           "train_features": tr_feat.astype(np.float16), "test_features": te_feat.astype(np.float16)}
    if method == "natural":
        flip = PGD(eps=cfg.eps, step_size=2.5 * cfg.eps / cfg.eval_steps, steps=cfg.eval_steps, norm=cfg.norm,
                   random_start=False)
        out["steps_to_flip"] = steps_to_flip(model, run.train_images, torch.as_tensor(run.train_labels), flip, dev)
    return out


def crossval_stage(run) -> dict:
    cfg = run.cfg
    spec = replace(run.spec("natural"), epochs=cfg.cv_epochs, lr=cfg.cv_lr, batch_size=cfg.cv_batch_size)
    return cross_validate(run.train_images, run.train_labels, run.test_images, spec,
                          run.ds.num_classes, folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed,
                          device=run.device, progress=run.progress, groups=run.cv_groups)


def _load_tracin_checkpoints(run) -> list[tuple[float, dict]]:
    files = sorted((run.ckpt / "tracin").glob("natural-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    out = []
    for p in files:
        d = torch.load(p, map_location="cpu", weights_only=True)
        out.append((float(d["weight"]), d["state"]))
    return out


def influence_stage(run, trained: dict, cv: dict) -> dict:
    """Self-influence (TracIn), neighbour evidence, and the train→test pairs behind test errors.

    Pairs: for every test example the natural model gets wrong (``natural_error``) and every one a
    robust model gets wrong while the natural one is right (``robust_error``, the paper's Figure 4),
    the ``knn_k`` nearest training images in the natural model's embedding are re-ranked by TracIn:
    for natural errors the strongest opponents first (training images that pushed it to the wrong
    class), for robust errors the strongest proponents first (the atypical images the natural model
    memorized and the robust model refused to fit).
    """
    cfg = run.cfg
    nat = trained["natural"]
    n_real = int((~run.is_canary).sum())
    base = nat["train_features"][:n_real].astype(np.float32)
    te_feat = nat["test_features"].astype(np.float32)
    nat_wrong = nat["test_logits"].argmax(1) != run.test_labels
    robust = [m for m in cfg.models if m != "natural"]
    rob_wrong = np.zeros_like(nat_wrong)
    for m in robust:
        rob_wrong |= trained[m]["test_logits"].argmax(1) != run.test_labels
    query = np.flatnonzero(nat_wrong | rob_wrong)
    reason = np.where(nat_wrong[query], "natural_error", "robust_error")
    backend = "torch" if run.device.type == "cuda" else "faiss"
    sims, cand = knn(base, te_feat[query], cfg.knn_k, backend=backend)

    model = run.new_model().to(run.device)
    ckpts = _load_tracin_checkpoints(run)
    self_infl, pair_infl = tracin(model, ckpts, run.train_images, run.train_labels, run.device,
                                  run.test_images[torch.as_tensor(query, dtype=torch.long)] if len(query) else run.test_images[:0],
                                  run.test_labels[query], cand)
    fz, fz_se = feldman_zhang_influence(cv["test_probs"], cv["masks"][:, :n_real], run.test_labels, query, cand)

    keep = min(cfg.pairs_per_test, cand.shape[1])
    sign = np.where(reason == "natural_error", 1.0, -1.0)[:, None]  # opponents first / proponents first
    order = np.argsort(sign * pair_infl, axis=1, kind="stable")[:, :keep] if len(query) else np.zeros((0, keep), int)
    rows = np.arange(len(query))[:, None]
    pairs = {
        "pair_query": np.repeat(query, keep),
        "pair_train": cand[rows, order].ravel(),
        "pair_rank": np.tile(np.arange(1, keep + 1), len(query)),
        "pair_similarity": sims[rows, order].ravel(),
        "pair_influence": pair_infl[rows, order].ravel() if len(query) else np.zeros(0, np.float32),
        "pair_fz_influence": fz[rows, order].ravel(),
        "pair_fz_influence_se": fz_se[rows, order].ravel(),
        "pair_reason": np.repeat(reason, keep).astype(str),
    }

    # Neighbour evidence: in a robust model's embedding when there is one (it did not memorize the noise).
    emb = trained[robust[0]] if robust else nat
    ev_base = emb["train_features"][:n_real].astype(np.float32)
    all_q = np.concatenate([emb["train_features"], emb["test_features"]]).astype(np.float32)
    k = min(NEIGHBORS + 1, n_real)
    nsim, nidx = knn(ev_base, all_q, k, backend=backend)
    # drop each real training row's match with itself
    own = np.r_[np.arange(n_real), np.full(len(all_q) - n_real, -1)]
    is_self = nidx == own[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k - 1)
    keep_mask = np.ones_like(nidx, bool)
    keep_mask[np.arange(len(nidx)), drop] = False
    nidx = nidx[keep_mask].reshape(len(nidx), k - 1)
    nsim = nsim[keep_mask].reshape(len(nsim), k - 1)
    return {"self_influence": self_infl, "neighbor_idx": nidx, "neighbor_sim": nsim, **pairs}


def write_outputs(run, trained: dict, cv: dict, infl: dict) -> tuple[dict, dict]:
    from audit.signals.table import build_tables

    return build_tables(run, trained, cv, infl)
