"""The run configuration: one frozen dataclass, defaults chosen per dataset, flags override.

Per-dataset defaults (eps and step sizes in [0, 1] pixel units):

=============  ==========  ========  ===================  ==============================================
images         arch        epochs*   train attack         source
=============  ==========  ========  ===================  ==============================================
≤ 16×16 grey   mlp         100/40/60 eps 0.1, 5 steps     scaled down for scikit-learn's 8×8 digits (0..16 grey levels)
MNIST-like     mnist_cnn   15/8/10   eps 0.3, 2 steps     Madry et al. 2018 / the paper: eps 0.3 (paper: 30 steps);
                                     (0.1 Fashion-MNIST)  eps 0.1 for ``fashion-mnist:`` (TRADES' Fashion-MNIST setting)
colour         resnet18    40/30/15  eps 8/255, 7 steps   Madry et al. 2018 / Rice et al. 2020: eps 8/255, step 2/255
=============  ==========  ========  ===================  ==============================================

(*) natural / robust / cross-validation epochs. The natural model trains to (near) zero training
error, as in the paper; the cross-validation models (``cv_epochs``, ``cv_lr``, ``cv_batch_size``)
stop earlier: they only need good out-of-sample probabilities, which memorization does not improve.

The augmented model (``augment``: ``shift`` for grey images, ``shift+flip`` for colour, ``none`` for
images of 16×16 or less, where the MLP and a one-pixel shift help little) is a natural model at
``aug_width`` (half the natural width) trained on shifted images for ``aug_epochs`` (25 on MNIST-like
images, else the natural epochs). On 10,000 Fashion-MNIST images with 20% noise, its late AUM ranked
the noise at AUPRC 0.969 (symmetric) and 0.908 (confusion noise) at width 0.25 for 25 epochs (about
55 s on 2 cores), better than width 0.5 for 15 epochs (0.967 / 0.885, 80 s) or width 0.25 for 15
(0.962 / 0.877, 30 s); cleanlab's workflow reached 0.945 / 0.798 on the same data.

MNIST-like defaults are sized so the whole audit costs at most 3× cleanlab's cross-validation on
the same folds (``benchmarks/detection.py``): the natural model memorizes in 15 epochs at batch 64
and peak lr 0.1 (batch 128, lr 0.05 needs 30), and PGD-AT uses 2 steps of 1.25·eps for 8 epochs at
batch 128 (10 before the augmented model took its share of the budget). On 10,000 MNIST digits with
15% noise, the robust margin of PGD-AT with 2 steps × 12 epochs detected the noise as well as 6 steps
× 16 epochs (AUPRC 0.995 against 0.995) at about 40% of the cost; 3 steps × 10 epochs reached 0.994.
(PGD-AT at batch 64 for 10 epochs did not become robust: 17% adversarial test accuracy.)
``audit reproduce`` and ``--steps`` / ``--robust-epochs`` give the paper's heavier setting.

The evaluation attack is stronger than the training one: ``eval_steps`` (default 2.5× the training
steps, at least 20) with ``eval_restarts`` random restarts (2 on the tiny digits; 1 elsewhere, where
a second restart costs as much as the first and moved MNIST's adversarial accuracy by 0.001); an
example counts as broken when any iterate of any restart misclassifies it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from audit.errors import AuditInputError

AUGMENTS = ("none", "shift", "shift+flip")  # training augmentations (audit.train.engine.augment_batch)

MODEL_METHODS = {"natural": "natural", "pgd": "pgd", "trades": "trades", "fgsm": "fgsm"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's results. ``None`` means "pick the dataset default"."""

    dataset: str = "digits"
    models: tuple[str, ...] = ("natural", "pgd")
    noise: float = 0.0
    noise_kind: str = "symmetric"
    seed: int = 0
    device: str = "auto"
    download: bool = False
    arch: str | None = None
    width: float | None = None
    epochs: int | None = None
    robust_epochs: int | None = None
    cv_epochs: int | None = None
    batch_size: int | None = None
    robust_batch_size: int | None = None
    cv_batch_size: int | None = None
    lr: float | None = None
    robust_lr: float | None = None
    cv_lr: float | None = None
    augment: str | None = None
    aug_epochs: int | None = None
    aug_width: float | None = None
    weight_decay: float | None = None
    norm: str = "linf"
    eps: float | None = None
    step_size: float | None = None
    steps: int | None = None
    eps_warmup: float | None = None
    trades_beta: float = 6.0
    eval_steps: int | None = None
    eval_restarts: int | None = None
    folds: int = 4
    repeats: int = 1
    knn_k: int = 50
    pairs_per_test: int = 5
    canary_rate: float = 0.03
    tracin_checkpoints: int = 4
    compile: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["models"] = list(self.models)
        return d

    def hash(self, keys: tuple[str, ...] | None = None) -> str:
        d = self.to_dict()
        if keys is not None:
            d = {k: d[k] for k in keys}
        d.pop("device", None)  # results do not depend on where or how fast they were computed
        d.pop("compile", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def validate_config(cfg: RunConfig) -> None:
    """Check options before any heavy work: one problem, one line naming the option."""
    bad = [m for m in cfg.models if m not in MODEL_METHODS]
    if bad or not cfg.models:
        raise AuditInputError(f"--models {','.join(cfg.models)!r}: unknown model(s) {bad} (known: natural, pgd, trades, fgsm)")
    if "natural" not in cfg.models:
        raise AuditInputError("--models must include natural (the embeddings and influence come from it)")
    if not 0 <= cfg.noise < 1:
        raise AuditInputError(f"--noise {cfg.noise}: must be in [0, 1)")
    if cfg.folds < 2:
        raise AuditInputError(f"--folds {cfg.folds}: needs at least 2 for out-of-sample probabilities")
    if cfg.norm not in ("linf", "l2"):
        raise AuditInputError(f"--norm {cfg.norm!r}: must be linf or l2")
    if cfg.eps is not None and cfg.eps < 0:
        raise AuditInputError(f"--eps {cfg.eps}: must be ≥ 0")
    if cfg.augment is not None and cfg.augment not in AUGMENTS:
        raise AuditInputError(f"--augment {cfg.augment!r}: must be one of {', '.join(AUGMENTS)}")
    if cfg.aug_width is not None and cfg.aug_width <= 0:
        raise AuditInputError(f"--aug-width {cfg.aug_width}: must be > 0")
    if cfg.aug_epochs is not None and cfg.aug_epochs < 1:
        raise AuditInputError(f"--aug-epochs {cfg.aug_epochs}: must be ≥ 1 (use --augment none to skip the model)")
    if not 0 <= cfg.canary_rate < 0.5:
        raise AuditInputError(f"--canary-rate {cfg.canary_rate}: must be in [0, 0.5)")


def resolve_defaults(cfg: RunConfig, shape: tuple[int, int, int], n_train: int, on_gpu: bool) -> RunConfig:
    """Fill every ``None`` from the table in this module's docstring."""
    c, h, w = shape
    if h * w <= 16 * 16:
        d = dict(arch="mlp", width=1.0, epochs=100, robust_epochs=40, cv_epochs=60, batch_size=128, lr=0.2, robust_lr=0.1,
                 augment="none", weight_decay=0.0, eps=0.1, steps=5, eps_warmup=0.0, eval_restarts=2)
    elif c == 1:
        fashion = cfg.dataset.startswith("fashion-mnist:")
        d = dict(arch="mnist_cnn", width=1.0 if on_gpu else 0.5, epochs=15, robust_epochs=8, cv_epochs=10,
                 batch_size=64, robust_batch_size=128, cv_batch_size=128, lr=0.1, robust_lr=0.05, cv_lr=0.05,
                 augment="shift", aug_epochs=25,
                 weight_decay=0.0, eps=0.1 if fashion else 0.3, steps=2, eps_warmup=0.4, eval_restarts=1)
    else:
        d = dict(arch="resnet18", width=1.0 if on_gpu else 0.25, epochs=40, robust_epochs=30, cv_epochs=15,
                 batch_size=256, augment="shift+flip",
                 lr=0.1, robust_lr=0.1, weight_decay=5e-4, eps=8 / 255, steps=7, eps_warmup=0.2, eval_restarts=1)
    if cfg.norm == "l2" and cfg.eps is None:
        d["eps"] = {"mlp": 0.5, "mnist_cnn": 2.0, "resnet18": 0.5}[d["arch"]]
    upd = {k: v for k, v in d.items() if getattr(cfg, k) is None}
    cfg = replace(cfg, **upd)
    upd = {}
    if cfg.cv_lr is None:
        upd["cv_lr"] = cfg.lr
    if cfg.cv_batch_size is None:
        upd["cv_batch_size"] = cfg.batch_size
    if cfg.aug_epochs is None:
        upd["aug_epochs"] = cfg.epochs
    if cfg.aug_width is None:
        upd["aug_width"] = cfg.width / 2
    if cfg.robust_batch_size is None:
        upd["robust_batch_size"] = cfg.batch_size
    if cfg.step_size is None:
        upd["step_size"] = 2.5 * cfg.eps / cfg.steps
    if cfg.eval_steps is None:
        upd["eval_steps"] = max(20, int(2.5 * cfg.steps))
    return replace(cfg, **upd)


def config_from_dict(d: dict) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise AuditInputError(f"unknown run option(s): {', '.join(unknown)}")
    d = dict(d)
    if "models" in d and isinstance(d["models"], str):
        d["models"] = tuple(m.strip() for m in d["models"].split(",") if m.strip())
    elif "models" in d:
        d["models"] = tuple(d["models"])
    return RunConfig(**d)
