"""The pipeline's stages as pure functions: ``(TrainData, sub-config, earlier arrays) -> arrays``.

No stage sees the orchestrator, the run directory or the manifest: each takes plain numpy arrays and
frozen configs and returns a flat ``dict`` of numpy arrays, so the same functions run in this process
or as Ray tasks (:mod:`audit.engines`). Model weights leave a training stage as arrays too
(``state.<name>`` and ``tracin<i>.<name>``); the orchestrator writes them as checkpoints.
``resume`` (a file path or ``None``) lets an interrupted training go on from its last epoch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from audit.neighbors import search
from audit.recipes import ApgdConfig, CrossValConfig, EvalConfig, PairConfig
from audit.rows import Rows, subset
from audit.signals.crossval import cross_validate, feldman_zhang_influence
from audit.signals.influence import tracin
from audit.train.attacks import PGD
from audit.train.engine import TrainSpec, train_model
from audit.train.evaluate import adversarial_correct, infer, steps_to_flip
from audit.train.evaluate import eval_attack as evaluate_attack
from audit.train.models import build_model

NEIGHBORS = 10  # neighbours kept per example as evidence for the app and for `category`


@dataclass(frozen=True)
class TrainData:
    """What every stage trains and evaluates on: training rows plus canaries, and the test rows."""

    train_images: Rows  # uint8 (N_aug, C, H, W): real training rows (less the canaries' sources), then canaries
    train_labels: np.ndarray  # int64 (N_aug,)
    test_images: Rows  # uint8 (N_test, C, H, W)
    test_labels: np.ndarray  # int64 (N_test,)
    is_canary: np.ndarray  # bool (N_aug,)
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_real(self) -> int:
        return int((~self.is_canary).sum())


def eval_attack(ev: EvalConfig) -> PGD:
    """The run's PGD evaluation attack (:func:`audit.train.evaluate.eval_attack`)."""
    return evaluate_attack("pgd", eps=ev.eps, norm=ev.norm, steps=ev.steps, restarts=ev.restarts, num_classes=0)


def _state_arrays(prefix: str, state: dict) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v.detach().cpu().numpy() for k, v in state.items()}


def state_from_arrays(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` a stage returned under ``prefix`` (``state``, ``tracin0``, ...)."""
    p = prefix + "."
    return {k[len(p):]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(p)}


def train_stage(data: TrainData, recipe: TrainSpec, ev: EvalConfig, *, device: str = "cpu",
                resume: str | None = None, progress: bool = False, compile: bool = False,
                init: dict | None = None, evaluate_from: dict | None = None) -> dict:
    """Train one model (natural or robust) on train + canaries, then evaluate it. ``compile``
    (``--compile``) torch.compiles the training forward; it changes speed, not results.

    ``init``: an earlier natural attempt's arrays (a model that did not fit its labels): the model starts
    from its final weights and trains the epochs ``recipe.epochs`` adds to it, on a schedule of their own (a warm
    restart, seed + k for the k-th continuation's new batch orders); the records and TracIn checkpoints are
    the earlier attempt's followed by these, so the dynamics cover all ``recipe.epochs`` and the influence
    stage sums over 2x (3x after a second continuation) ``--tracin-checkpoints``.

    ``evaluate_from``: the arrays of a training of this same recipe evaluated under another ``ev`` (the
    natural model after a radius judged at the ladder's top failed: its training does not depend on the
    radius, its evaluation does): no training; its records, TracIn checkpoints and final weights are kept
    and evaluated under ``ev``, so the result is what training afresh would give."""
    dev = torch.device(device)
    if evaluate_from is not None:
        return _evaluated_again(data, recipe, ev, evaluate_from, dev)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.arch, data.shape, data.num_classes, recipe.width)
    spec, done = recipe, 0
    if init is not None:
        model.load_state_dict(_final_state(init))
        done = len(init["lrs"])
        if recipe.epochs <= done:
            raise ValueError(f"a continued training needs more than the {done} epochs it starts from")
        continued = int(init.get("continued", 0)) + 1  # new batch orders for each continuation
        spec = replace(recipe, epochs=recipe.epochs - done, seed=recipe.seed + continued)
    res = train_model(model, data.train_images, torch.as_tensor(data.train_labels), spec,
                      device=dev, checkpoint=resume, desc=f"train {recipe.method}", progress=progress,
                      compile=compile)
    if recipe.method == "natural":
        recompute_bn(res.model, data.train_images, dev)
    out = {"loss": res.loss.astype(np.float16), "margin": res.margin.astype(np.float16), "correct": res.correct,
           "lrs": res.lrs, "train_seconds": np.float64(res.seconds)}
    tracin = [(w, state) for _, w, state in res.tracin]
    if init is not None:
        for k in ("loss", "margin", "correct", "lrs"):
            out[k] = np.concatenate([np.asarray(init[k]).astype(out[k].dtype), out[k]])
        out["train_seconds"] = np.float64(float(init["train_seconds"]) + res.seconds)
        out["continued"] = np.int64(continued)
        if recipe.method == "natural":
            tracin = [(float(w), state_from_arrays(init, f"tracin{i}"))
                      for i, w in enumerate(init["tracin_weights"])] + tracin
    out.update(_state_arrays("state", res.model.state_dict()))
    if recipe.method == "natural":
        out["tracin_weights"] = np.array([w for w, _ in tracin], np.float64)
        for i, (_, state) in enumerate(tracin):
            out.update(_state_arrays(f"tracin{i}", state))
    out.update(evaluate(res.model, data, ev, natural=recipe.method == "natural", device=dev))
    return out


BN_ARCHS = ("airbench", "resnet18")  # the architectures with batch norm (tests/test_colour_recipe.py checks)


def recompute_bn(model: torch.nn.Module, images, device, batch: int = 256) -> torch.nn.Module:
    """Batch-norm running statistics recomputed exactly over ``images`` for the model's final weights
    (cumulative averages in train mode, no gradient), then eval mode. The natural model's evaluation
    needs them: airbench tracks its statistics fast (momentum 0.6, for the attacks during robust
    training), so after training they are those of its last few batches, and in eval mode the memorizer
    fitted 0.916 and 0.962 of the development colour folders' labels, against 0.98 and 0.996 with the
    statistics of its training rows (test accuracy 0.70 / 0.69 and 0.56 / 0.55). A function of the weights
    and the rows alone, so a cached model gets the same. Models without batch norm are unchanged."""
    from audit.device import autocast
    from audit.rows import take

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = take(images, slice(start, start + batch)).to(device).float().div_(255.0)
            with autocast(device):
                model(x)
    for m, mo in zip(bns, momenta):
        m.momentum = mo
    return model.eval()


def _final_state(arrays: dict) -> dict:
    """A training stage's final weights: ``state.*`` when it ran in this process; from the cache (whose
    weights went to checkpoints), its last TracIn checkpoint, which is taken after the last epoch."""
    last = f"tracin{len(arrays.get('tracin_weights', [])) - 1}"
    return state_from_arrays(arrays, "state") or state_from_arrays(arrays, last)


def _evaluated_again(data: TrainData, recipe: TrainSpec, ev: EvalConfig, arrays: dict, dev) -> dict:
    """``train_stage(evaluate_from=arrays)``: the same training, evaluated under ``ev``."""
    model = build_model(recipe.arch, data.shape, data.num_classes, recipe.width)
    state = _final_state(arrays)
    if not state:
        raise ValueError("a training to evaluate again needs its final weights")
    model.load_state_dict(state)
    model.to(dev)
    if recipe.method == "natural":
        recompute_bn(model, data.train_images, dev)
    model.eval()
    keep = ("loss", "margin", "correct", "lrs", "train_seconds", "continued", "tracin_weights")
    out = {k: arrays[k] for k in keep if k in arrays}
    out.update({k: v for k, v in arrays.items() if k.startswith("tracin") and "." in k})
    out.update(_state_arrays("state", model.state_dict()))
    out.update(evaluate(model, data, ev, natural=recipe.method == "natural", device=dev))
    return out


def evaluate(model: torch.nn.Module, data: TrainData, ev: EvalConfig, *, natural: bool, device) -> dict:
    """Logits and features on train (+ canaries) and test, adversarial correctness on test and, for
    the natural model, PGD steps to flip each training example."""
    tr_img, te_img = data.train_images, data.test_images
    tr_logits, tr_feat = infer(model, tr_img, device, features=True)
    te_logits, te_feat = infer(model, te_img, device, features=True)
    torch.manual_seed(ev.seed + 1)
    adv = adversarial_correct(model, te_img, torch.as_tensor(data.test_labels), eval_attack(ev), device)
    out = {"train_logits": tr_logits, "test_logits": te_logits, "adv_correct_test": adv,
           "train_features": tr_feat.astype(np.float16), "test_features": te_feat.astype(np.float16)}
    if natural:
        flip = replace(eval_attack(ev), random_start=False, restarts=1)
        out["steps_to_flip"] = steps_to_flip(model, tr_img, torch.as_tensor(data.train_labels), flip, device)
    return out


def apgd_stage(data: TrainData, ac: ApgdConfig, trained: dict, *, device: str = "cpu") -> dict:
    """AutoAttack-style evaluation of a trained model on the test rows: APGD-CE and APGD-T
    (torchattacks) on the examples the run's PGD left correct; ``trained`` holds the model's weights
    (``state.*``) and its PGD result (``adv_correct_test``)."""
    from audit.train.evaluate import robust_correct

    dev = torch.device(device)
    model = build_model(ac.arch, data.shape, data.num_classes, ac.width)
    model.load_state_dict(state_from_arrays(trained, "state"))
    model.to(dev).eval()
    ev = ac.eval
    ok = robust_correct(model, data.test_images, torch.as_tensor(data.test_labels), "apgd",
                        eps=ev.eps, norm=ev.norm, steps=ev.steps, restarts=ev.restarts, num_classes=data.num_classes,
                        device=dev, seed=ev.seed + 1, apgd_steps=ac.apgd_steps, pgd_correct=trained["adv_correct_test"])
    return {"apgd_correct_test": ok}


def aug_stage(data: TrainData, recipe: TrainSpec, *, device: str = "cpu", resume: str | None = None,
              progress: bool = False, compile: bool = False) -> dict:
    """The augmented model: natural training with ``recipe.augment``. Augmentation slows its memorizing
    of noisy labels, so its area under the margin stays a clean noise signal for longer (``aum_aug``, over
    the epochs :func:`audit.signals.registry.aug_window` picks; Pleiss et al. 2020 train with augmentation
    too). Only its per-example dynamics and test accuracy are kept. A training that collapses to chance
    (:func:`audit.health.collapsed`) stops there: ``collapsed_at`` is the epochs it ran (−1: it ran them
    all), and its ``beats_chance`` check fails and retrains it."""
    from audit.health import chance_level, collapsed

    dev = torch.device(device)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.arch, data.shape, data.num_classes, recipe.width)
    chance = chance_level(data.train_labels)
    res = train_model(model, data.train_images, torch.as_tensor(data.train_labels), recipe,
                      device=dev, checkpoint=resume, desc=f"train natural, {recipe.augment} augmented",
                      progress=progress, compile=compile, stop_on_accuracy=lambda a: collapsed(a, chance))
    acc = np.nan
    if len(data.test_labels):
        acc = (infer(res.model, data.test_images, dev)[0].argmax(1) == data.test_labels).mean()
    # a training that collapsed to chance stops there (it fails beats_chance and is retried): the epochs run
    stopped = len(res.lrs) if len(res.lrs) < recipe.epochs else -1
    return {"margin": res.margin.astype(np.float16), "correct": res.correct, "test_accuracy": np.float64(acc),
            "train_seconds": np.float64(res.seconds), "collapsed_at": np.int64(stopped)}


def crossval_stage(data: TrainData, cv: CrossValConfig, *, device: str = "cpu", progress: bool = False) -> dict:
    return cross_validate(data.train_images, data.train_labels, data.test_images,
                          cv.recipe, data.num_classes, folds=cv.folds, repeats=cv.repeats, seed=cv.seed,
                          device=torch.device(device), progress=progress, subsets=cv.subsets)


def influence_stage(data: TrainData, pc: PairConfig, natural: dict, robust: dict[str, dict], cv: dict, *,
                    device: str = "cpu", features: dict | None = None) -> dict:
    """Self-influence (TracIn), the train→test pairs behind test errors, and neighbour evidence.

    Pairs: for every test example the natural model gets wrong (``natural_error``) and every one a
    robust model gets wrong while the natural one is right (``robust_error``, the paper's Figure 4),
    the ``knn_k`` nearest training images in the natural model's embedding are re-ranked by TracIn:
    for natural errors the strongest opponents first (training images that pushed it to the wrong
    class), for robust errors the strongest proponents first (the atypical images the natural model
    memorized and the robust model refused to fit).

    ``features`` (``--features``: ``train_features`` (N_aug, D), ``test_features``) replaces the models'
    embeddings for the nearest neighbours of the pairs and of the neighbour evidence.
    """
    dev = torch.device(device)
    nat_wrong = natural["test_logits"].argmax(1) != data.test_labels
    rob_wrong = np.zeros_like(nat_wrong)
    for m in pc.robust_models:
        rob_wrong |= robust[m]["test_logits"].argmax(1) != data.test_labels
    query = np.flatnonzero(nat_wrong | rob_wrong)
    reason = np.where(nat_wrong[query], "natural_error", "robust_error")
    space = features or natural
    base = space["train_features"][:data.num_real].astype(np.float32)
    sims, cand, pair_info = search(base, space["test_features"].astype(np.float32)[query], pc.knn_k,
                                   device=dev.type)
    self_infl, pair_infl = _tracin(data, pc, natural, query, cand, dev)
    fz, fz_se = feldman_zhang_influence(cv["test_probs"], cv["masks"][:, :data.num_real], data.test_labels, query, cand)
    keep = min(pc.pairs_per_test, cand.shape[1])
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
    emb = features or (robust[pc.robust_models[0]] if pc.robust_models else natural)
    nidx, nsim, ev_info = _neighbour_evidence(emb, data.num_real, dev.type)
    info = json.dumps({"pairs": pair_info, "evidence": ev_info})
    return {"self_influence": self_infl, "neighbor_idx": nidx, "neighbor_sim": nsim, "neighbors_info": np.array(info),
            **pairs}


def _tracin(data: TrainData, pc: PairConfig, natural: dict, query: np.ndarray, cand: np.ndarray, dev):
    model = build_model(pc.arch, data.shape, data.num_classes, pc.width).to(dev)
    ckpts = [(float(w), state_from_arrays(natural, f"tracin{i}")) for i, w in enumerate(natural["tracin_weights"])]
    test_img = data.test_images
    q_img = subset(test_img, query)
    return tracin(model, ckpts, data.train_images, data.train_labels, dev, q_img,
                  data.test_labels[query], cand)


def _neighbour_evidence(emb: dict, n_real: int, device: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The NEIGHBORS nearest real training rows of every training row (canaries too) and test row,
    without each real row's match with itself."""
    ev_base = emb["train_features"][:n_real].astype(np.float32)
    all_q = np.concatenate([emb["train_features"], emb["test_features"]]).astype(np.float32)
    k = min(NEIGHBORS + 1, n_real)
    nsim, nidx, info = search(ev_base, all_q, k, device=device)
    own = np.r_[np.arange(n_real), np.full(len(all_q) - n_real, -1)]
    is_self = nidx == own[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k - 1)
    keep_mask = np.ones_like(nidx, bool)
    keep_mask[np.arange(len(nidx)), drop] = False
    return nidx[keep_mask].reshape(len(nidx), k - 1), nsim[keep_mask].reshape(len(nsim), k - 1), info


def issues_stage(images, labels: np.ndarray, split: np.ndarray, ic, *, num_classes: int,
                 embeddings: np.ndarray | None = None, predictions: np.ndarray | None = None,
                 sizes: np.ndarray | None = None, device: str = "cpu") -> dict:
    """The issue types beyond label errors (:func:`audit.issues.find_issues`) over every dataset row in
    dataset order: ``images`` (N, C, H, W), given ``labels`` and ``split`` (N,), the natural model's
    ``embeddings`` (N, D) and ``predictions`` (N,), the source ``sizes`` (N, 2) when recorded;
    ``ic``: an :class:`audit.issues.IssueConfig`."""
    from audit.issues import find_issues

    return find_issues(images, labels, split, num_classes=num_classes, embeddings=embeddings, sizes=sizes,
                       predictions=predictions, config=ic, device=torch.device(device).type)


def train_arrays(out: dict) -> dict:
    """A training stage's outputs without its weights (what the cache and the tables keep)."""
    return {k: v for k, v in out.items() if "." not in k}

