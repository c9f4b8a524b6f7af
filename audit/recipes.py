"""Typed, frozen sub-configs: what each stage reads, derived from a resolved :class:`RunConfig`.

A stage's cache key is a hash of its sub-config, its upstream keys, the dataset fingerprint and the
stage's version (:mod:`audit.orchestrator`), so a run option that no stage's sub-config holds cannot
invalidate that stage. Recipes per model role leave out what the role does not use (a natural model
has no attack; robust models keep one TracIn checkpoint), so ``--steps`` never retrains the natural
model and ``--tracin-checkpoints`` never retrains a robust one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from audit.config import RunConfig
from audit.train.engine import TrainSpec


@dataclass(frozen=True)
class DataConfig:
    """How the training set is built from the (noisy) dataset: the planted canaries."""

    canary_rate: float
    seed: int


@dataclass(frozen=True)
class EvalConfig:
    """The evaluation attack: stronger than training (more steps, random restarts)."""

    norm: str
    eps: float
    steps: int
    restarts: int
    seed: int


@dataclass(frozen=True)
class ApgdConfig:
    """The stronger evaluation (``--eval-attack apgd``) of one trained model."""

    arch: str
    width: float
    eval: EvalConfig
    apgd_steps: int = 100


@dataclass(frozen=True)
class CrossValConfig:
    recipe: TrainSpec
    folds: int
    repeats: int
    seed: int
    subsets: int = 0


@dataclass(frozen=True)
class PairConfig:
    """Neighbours, TracIn pairs and neighbour evidence (the natural model's architecture to reload
    its TracIn checkpoints; the robust models whose errors are paired)."""

    arch: str
    width: float
    robust_models: tuple[str, ...]
    knn_k: int
    pairs_per_test: int


def train_recipe(cfg: RunConfig, role: str) -> TrainSpec:
    """The training recipe of one model role: ``natural``, a robust method, ``aug`` or ``cv``."""
    natural = TrainSpec(method="natural", arch=cfg.arch, width=cfg.width, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                        tracin_checkpoints=cfg.tracin_checkpoints)
    if role == "natural":
        return natural
    if role == "aug":
        return replace(natural, epochs=cfg.aug_epochs, width=cfg.aug_width, augment=cfg.augment, tracin_checkpoints=1)
    if role == "cv":
        return replace(natural, epochs=cfg.cv_epochs, lr=cfg.cv_lr, batch_size=cfg.cv_batch_size, tracin_checkpoints=1)
    return TrainSpec(method=role, arch=cfg.arch, width=cfg.width, epochs=cfg.robust_epochs,
                     batch_size=cfg.robust_batch_size, lr=cfg.robust_lr, weight_decay=cfg.weight_decay,
                     norm=cfg.norm, eps=cfg.eps, step_size=cfg.step_size, steps=cfg.steps,
                     trades_beta=cfg.trades_beta if role == "trades" else TrainSpec.trades_beta,
                     eps_warmup=cfg.eps_warmup, seed=cfg.seed, tracin_checkpoints=1)


def eval_config(cfg: RunConfig) -> EvalConfig:
    return EvalConfig(norm=cfg.norm, eps=cfg.eps, steps=cfg.eval_steps, restarts=cfg.eval_restarts, seed=cfg.seed)


def apgd_config(cfg: RunConfig) -> ApgdConfig:
    return ApgdConfig(arch=cfg.arch, width=cfg.width, eval=eval_config(cfg))


def data_config(cfg: RunConfig) -> DataConfig:
    return DataConfig(canary_rate=cfg.canary_rate, seed=cfg.seed)


def crossval_config(cfg: RunConfig) -> CrossValConfig:
    return CrossValConfig(recipe=train_recipe(cfg, "cv"), folds=cfg.folds, repeats=cfg.repeats, seed=cfg.seed,
                          subsets=cfg.subset_models)


def pair_config(cfg: RunConfig) -> PairConfig:
    return PairConfig(arch=cfg.arch, width=cfg.width, robust_models=tuple(m for m in cfg.models if m != "natural"),
                      knn_k=cfg.knn_k, pairs_per_test=cfg.pairs_per_test)


def as_key(obj):
    """A sub-config (or a dict of them) as plain JSON for hashing."""
    if isinstance(obj, dict):
        return {k: as_key(v) for k, v in obj.items()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:  # e.g. an input file's fingerprint
        return obj
    return asdict(obj)
